"""The hot catalog reads answer byte for byte what they answered before issue 21's rewrite of
them (Core selects producing the dicts instead of ORM entities): the public list with every
filter, sort and page, search, the public and the signed-in course detail for each kind of
reader, the instructors' and admins' lists, the outline and the enrolled-courses list that
share the course card.

A fixed world (explicit ids and timestamps, so the answers do not depend on the order tests
run in nor on the database) is read through the HTTP API, and each answer's bytes are compared
with tests/snapshots/hot_reads_catalog.json. When an answer changes on purpose, regenerate the
file with UPDATE_SNAPSHOTS=1 and review its diff.

Also pinned here: the number of statements each of these reads costs.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from models import (
    Course,
    CoursePrerequisite,
    Enrollment,
    Lesson,
    LessonProgress,
    LessonResource,
    MasterCategory,
    Module,
    Subcategory,
    User,
    db,
)
from services import course_service
from tests.support.queries import recorded_statements
from utils import pagination

API = "/api/v1"
SNAPSHOT = Path(__file__).parent / "snapshots" / "hot_reads_catalog.json"
T0 = datetime(2025, 3, 1, 8, 30, tzinfo=timezone.utc)
# Ids far above what any other test's sequences reach, so the rows never collide.
ADMIN, OWNER, OTHER_TEACHER, STUDENT, STRANGER = 910001, 910002, 910003, 910004, 910005
MASTER, MASTER_2 = 910101, 910102
SUB_WEB, SUB_DATA, SUB_ART = 910201, 910202, 910203
PYTHON, PANDAS, DRAWING, FREE_DRAFT, ARCHIVED, COOKING, REVIEW = range(910301, 910308)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _user(user_id: int, role: str, first: str, last: str, **fields) -> User:
    return User(id=user_id, email=f"u{user_id}@example.com", first_name=first, last_name=last,
                role=role, is_active=True, is_email_verified=True, created_at=at(0),
                updated_at=at(0), **fields)


def _course(course_id: int, minutes: int, **fields) -> Course:
    values = dict(slug=f"course-{course_id}", instructor_id=OWNER, status="published",
                  price=Decimal("0.00"), currency="USD", created_at=at(minutes),
                  updated_at=at(minutes + 1), short_description="Short", description="Long")
    values.update(fields)
    if values["status"] == "published" and "published_at" not in values:
        values["published_at"] = at(minutes)
    return Course(id=course_id, **values)


def seed_world(app) -> None:
    rows = [
        _user(ADMIN, "admin", "Ada", "Admin"),
        _user(OWNER, "instructor", "Olga", "Owner", bio="Teaches Python", headline="Engineer",
              profile_picture="https://cdn.example.com/olga.png"),
        _user(OTHER_TEACHER, "instructor", "Théo", ""),
        _user(STUDENT, "student", "Sam", "Student"),
        _user(STRANGER, "student", "Stan", "Stranger"),
        MasterCategory(id=MASTER, name="Tech", slug="tech", position=1, created_at=at(0),
                       updated_at=at(0)),
        MasterCategory(id=MASTER_2, name="Arts", slug="arts", position=2, created_at=at(0),
                       updated_at=at(0)),
        Subcategory(id=SUB_WEB, master_category_id=MASTER, name="Web", slug="web", position=1,
                    created_at=at(0), updated_at=at(0)),
        Subcategory(id=SUB_DATA, master_category_id=MASTER, name="Data", slug="data",
                    position=2, created_at=at(0), updated_at=at(0)),
        Subcategory(id=SUB_ART, master_category_id=MASTER_2, name="Art", slug="art",
                    position=1, created_at=at(0), updated_at=at(0)),
        _course(PYTHON, 10, title="Python for the web", subcategory_id=SUB_WEB,
                price=Decimal("49.90"), difficulty="intermediate",
                duration_hours=Decimal("12.50"), learning_outcomes=["Flask", "SQL"],
                language="English", thumbnail_url="https://cdn.example.com/py.png"),
        _course(PANDAS, 20, title="Pandas, data at scale", subcategory_id=SUB_DATA,
                price=Decimal("19.00"), difficulty="advanced", language="French",
                mode_of_conduct="OFFLINE", short_description=None, description=None),
        _course(DRAWING, 30, title="Drawing: café sketches", subcategory_id=SUB_ART,
                instructor_id=OTHER_TEACHER, learning_outcomes=[]),
        _course(FREE_DRAFT, 40, title="Python internals (draft)", status="draft",
                subcategory_id=SUB_WEB),
        _course(ARCHIVED, 50, title="Old Python course", status="archived",
                subcategory_id=None, price=Decimal("5.00"), published_at=at(50)),
        _course(COOKING, 60, title="Cooking basics", subcategory_id=None,
                price=Decimal("5.00"), instructor_id=OTHER_TEACHER),
        _course(REVIEW, 70, title="Awaiting review", status="draft", subcategory_id=SUB_DATA,
                review_requested_at=at(75)),
    ]
    modules = [(910401, PYTHON, 1, "Basics", "What you need"), (910402, PYTHON, 0, "Setup", None),
               (910403, PANDAS, 0, "Frames", None), (910404, ARCHIVED, 0, "Legacy", None),
               (910405, FREE_DRAFT, 0, "Internals", None)]
    for module_id, course_id, position, title, description in modules:
        rows.append(Module(id=module_id, course_id=course_id, title=title, position=position,
                           description=description, created_at=at(100), updated_at=at(101)))
    lessons = [(910501, 910401, 1, True, 30), (910502, 910401, 0, False, None),
               (910503, 910402, 0, False, 5), (910504, 910403, 0, True, 10),
               (910505, 910404, 0, False, 7), (910506, 910405, 0, False, 8),
               (910507, 910401, 2, False, 12)]
    for lesson_id, module_id, position, preview, minutes in lessons:
        rows.append(Lesson(id=lesson_id, module_id=module_id, title=f"Lesson {lesson_id}",
                           content=f"Body of {lesson_id}", video_url=f"https://v.example/{lesson_id}",
                           duration_minutes=minutes, position=position, is_preview=preview,
                           created_at=at(110), updated_at=at(111)))
    for resource_id, lesson_id, position in ((910601, 910501, 1), (910602, 910501, 0),
                                             (910603, 910502, 0), (910604, 910505, 0)):
        rows.append(LessonResource(
            id=resource_id, lesson_id=lesson_id, title=f"Resource {resource_id}",
            description="Slides" if position else None, original_filename="slides.pdf",
            stored_path=f"resources/{resource_id}.pdf", mime_type="application/pdf",
            file_type="pdf", file_size=1234, position=position, created_at=at(120),
            updated_at=at(121)))
    rows += [
        Enrollment(id=910701, user_id=STUDENT, course_id=PYTHON, status="active",
                   enrolled_at=at(200), created_at=at(200), updated_at=at(200)),
        Enrollment(id=910702, user_id=STUDENT, course_id=ARCHIVED, status="completed",
                   enrolled_at=at(201), completed_at=at(300), created_at=at(201),
                   updated_at=at(300)),
        Enrollment(id=910703, user_id=STRANGER, course_id=PANDAS, status="cancelled",
                   enrolled_at=at(202), created_at=at(202), updated_at=at(202)),
        Enrollment(id=910704, user_id=STRANGER, course_id=PYTHON, status="refunded",
                   enrolled_at=at(203), created_at=at(203), updated_at=at(203)),
        LessonProgress(id=910801, enrollment_id=910701, lesson_id=910501, completed=True,
                       completed_at=at(210), started_at=at(209), last_accessed_at=at(210),
                       created_at=at(210), updated_at=at(210)),
        LessonProgress(id=910802, enrollment_id=910701, lesson_id=910503, completed=False,
                       started_at=at(211), last_accessed_at=at(211), created_at=at(211),
                       updated_at=at(211)),
        LessonProgress(id=910803, enrollment_id=910704, lesson_id=910502, completed=True,
                       completed_at=at(212), started_at=at(212), last_accessed_at=at(212),
                       created_at=at(212), updated_at=at(212)),
        CoursePrerequisite(course_id=PYTHON, prerequisite_course_id=PANDAS, created_at=at(5)),
        CoursePrerequisite(course_id=PYTHON, prerequisite_course_id=FREE_DRAFT,
                           created_at=at(5)),
        CoursePrerequisite(course_id=PANDAS, prerequisite_course_id=DRAWING, created_at=at(5)),
    ]
    with app.app_context():
        for row in rows:
            db.session.add(row)
            db.session.flush()
        db.session.commit()


LISTS = [f"{API}/public/get-courses", f"{API}/courses"]
LIST_QUERIES = [
    "", "?per_page=2", "?per_page=2&page=2", "?per_page=2&page=9", f"?category_id={MASTER}",
    f"?subcategory_id={SUB_DATA}", "?difficulty=advanced", "?min_price=5&max_price=20",
    "?is_free=true", "?is_free=false", "?language=FRENCH", "?mode_of_conduct=offline",
    "?search=python", "?search=pyth&sort=title", "?search=%21%21", "?sort=oldest",
    "?sort=price_asc", "?sort=price_desc", "?sort=title", "?sort=popular",
    "?sort=popular&per_page=1&page=3",
]
DETAILS = [PYTHON, PANDAS, DRAWING, FREE_DRAFT, ARCHIVED, COOKING, REVIEW, 910399]


def reads() -> list[tuple[str, str, str | None, dict | None]]:
    """(name, path, who, json body for a POST)."""
    out = [(f"list {path}{query}", f"{path}{query}", None, None)
           for path in LISTS for query in LIST_QUERIES]
    out.append(("list signed in", f"{API}/public/get-courses", STUDENT, None))
    out += [(f"subcategory {sub}{query}", f"{API}/public/subcategories/{sub}/courses{query}",
             None, None)
            for sub in (SUB_WEB, SUB_DATA) for query in ("", "?sort=price_desc&per_page=1")]
    out += [(f"search {q}", f"{API}/public/courses/search?q={q}", None, None)
            for q in ("python", "pyth%20web", "caf%C3%A9", "%3F%3F", "nothing")]
    out.append(("search post", f"{API}/public/search", None, {"query": "python", "per_page": 1,
                                                              "page": 2}))
    for who in (None, STUDENT, STRANGER, OWNER, OTHER_TEACHER, ADMIN):
        for course in DETAILS:
            for path in (f"{API}/public/courses/{course}", f"{API}/courses/{course}",
                         f"{API}/courses/{course}/modules"):
                out.append((f"detail {path} as {who}", path, who, None))
    for who in (OWNER, OTHER_TEACHER, ADMIN):
        for course in (PYTHON, FREE_DRAFT, COOKING, REVIEW, 910399):
            path = f"{API}/courses/get-courses/{course}"
            out.append((f"teaching detail {path} as {who}", path, who, None))
        for query in ("", "?status=draft", "?status=published&sort=title", "?per_page=1&page=2"):
            for path in (f"{API}/courses/get-courses{query}",
                         f"{API}/users/my-teaching-courses{query}"):
                out.append((f"teaching {path} as {who}", path, who, None))
    for query in ("", "?status=draft", "?status=archived", f"?instructor_id={OTHER_TEACHER}",
                  "?search=python"):
        out.append((f"admin courses{query}", f"{API}/admin/courses{query}", ADMIN, None))
    out.append(("admin pending", f"{API}/admin/courses/pending", ADMIN, None))
    for who in (STUDENT, STRANGER):
        out.append((f"enrolled courses as {who}", f"{API}/users/enrolled-courses", who, None))
    return out


@pytest.fixture
def world(app, monkeypatch):
    # Every read is computed, none served from the catalog cache.
    monkeypatch.setitem(app.config, "CATALOG_CACHE_SECONDS", 0)
    seed_world(app)


def answer(client, auth_headers, n: int, path: str, who: int | None, body: dict | None) -> str:
    headers = auth_headers(who) if who else {}
    # An address of its own for each read: the public rate limits never answer instead.
    address = {"REMOTE_ADDR": f"10.91.{n >> 8}.{n & 255}"}
    if body is None:
        response = client.get(path, headers=headers, environ_base=address)
    else:
        response = client.post(path, headers=headers, json=body, environ_base=address)
    return f"{response.status_code} {response.get_data(as_text=True)}"


def test_answers_are_byte_identical_to_the_snapshot(app, client, auth_headers, world):
    got = {name: answer(client, auth_headers, n, path, who, body)
           for n, (name, path, who, body) in enumerate(reads())}
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert sorted(got) == sorted(expected)
    different = [name for name in expected if got[name] != expected[name]]
    assert not different, "\n\n".join(f"{name}\n  got      {got[name]}\n  expected "
                                      f"{expected[name]}" for name in different[:5])


def test_long_list_estimates_its_total_with_the_same_rows(app, client, world, monkeypatch):
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 2)
    monkeypatch.setattr(pagination, "_estimates", {})
    course_service._KEPT.clear()
    with recorded_statements(app) as statements:
        body = client.get(f"{API}/public/get-courses?per_page=2").get_json()
    assert [c["id"] for c in body["courses"]] == [COOKING, DRAWING]
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        assert body["pagination"]["total"] == 4
        return
    # The page (its capped total inside), the EXPLAIN and the cards of the two courses, whose
    # summaries no memo held yet (services/course_service.catalog_page).
    assert len(statements) == 3 and "ANY" in statements[-1]
    assert body["pagination"]["total_is_estimate"] is True
    assert body["pagination"]["total"] >= 3 and body["pagination"]["has_next"] is True
    # The same list again, another page of it: the kept estimate, no EXPLAIN.
    with recorded_statements(app) as statements:
        again = client.get(f"{API}/public/get-courses?per_page=1&page=2").get_json()
    assert len(statements) == 1 and not any("EXPLAIN" in s for s in statements)
    assert [c["id"] for c in again["courses"]] == [DRAWING]
    assert again["pagination"]["total"] == body["pagination"]["total"]
    # Other parameters are another list, with its own estimate.
    with recorded_statements(app) as statements:
        client.get(f"{API}/public/get-courses?per_page=2&min_price=1")
    assert any("EXPLAIN" in s for s in statements)
    # Once kept ESTIMATE_SECONDS, the planner is asked again.
    monkeypatch.setattr(pagination, "ESTIMATE_SECONDS", 0)
    monkeypatch.setattr(pagination, "_estimates", {})
    for _ in range(2):
        with recorded_statements(app) as statements:
            client.get(f"{API}/public/get-courses?per_page=2")
        assert len(statements) == 2


# What each read costs, in statements (the token's user comes from the Redis mirror, so no
# statement is the caller's own row). Lists: the page with its capped total in one statement;
# the first catalog list also reads its courses' cards (no summary of them kept yet).
# A course detail, whoever reads it: the card (with, for a student, whether they are enrolled,
# and whether the course has prerequisites at all) and the outline (with the lessons they
# completed) in one statement, and the prerequisites only for a course that has some (PYTHON;
# the others none). The instructor's own detail reads the card and the outline apart.
STATEMENTS = {
    ("list", f"{API}/public/get-courses", None): 2,
    ("list signed in", f"{API}/public/get-courses?sort=popular", STUDENT): 1,
    ("filtered list", f"{API}/courses?category_id={MASTER}&is_free=false", None): 1,
    ("search", f"{API}/public/courses/search?q=python", None): 1,
    ("public detail", f"{API}/public/courses/{PYTHON}", None): 2,
    ("public detail, enrolled", f"{API}/public/courses/{PYTHON}", STUDENT): 2,
    ("detail, enrolled", f"{API}/courses/{PYTHON}", STUDENT): 2,
    ("detail, not enrolled", f"{API}/courses/{PYTHON}", STRANGER): 2,
    ("detail, archived, enrolled", f"{API}/courses/{ARCHIVED}", STUDENT): 1,
    ("detail, owner's draft", f"{API}/courses/{FREE_DRAFT}", OWNER): 1,
    ("teaching detail, owner's draft", f"{API}/courses/get-courses/{FREE_DRAFT}", OWNER): 2,
    ("detail, admin", f"{API}/courses/{REVIEW}", ADMIN): 1,
}


def test_statements_per_read(app, client, auth_headers, world):
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("counted on PostgreSQL, where the estimate and the mirror are as deployed")
    headers = {who: auth_headers(who) for who in (STUDENT, STRANGER, OWNER, ADMIN)}
    for who in headers:  # each token's first request fills the mirror
        client.get(f"{API}/notifications/unread-count", headers=headers[who])
    course_service._KEPT.clear()  # the first list reads its courses' cards; the rest do not
    counted = {}
    for n, ((name, path, who), _) in enumerate(STATEMENTS.items()):
        with recorded_statements(app) as statements:
            response = client.get(path, headers=headers[who] if who else {},
                                  environ_base={"REMOTE_ADDR": f"10.92.0.{n}"})
        assert response.status_code == 200, (name, response.get_data(as_text=True))
        counted[name] = len(statements)
    assert counted == {name: count for (name, _, _), count in STATEMENTS.items()}
