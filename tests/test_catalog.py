"""The catalog through the HTTP API: master categories, subcategories, courses, modules,
lessons and prerequisites, under both route sets (the README's RESTful paths and the API
documentation's verb-style aliases). Every test checks the status code, the body and what the
database holds afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from models import (
    Course,
    CoursePrerequisite,
    Enrollment,
    Lesson,
    MasterCategory,
    Module,
    Subcategory,
    db,
)
from tests.support.assertions import count, error, ok
from tests.support.learning import (  # noqa: F401 (actor, instructor, student: fixtures)
    Actor,
    actor,
    instructor,
    student,
)

API = "/api/v1"


# --- helpers ----------------------------------------------------------------------------------

@pytest.fixture
def admin(actor):
    return actor("admin")


@pytest.fixture
def other_instructor(actor):
    return actor("instructor")


def new_master(client, admin: Actor, name: str = "Data Science", **fields) -> dict:
    return ok(client.post(f"{API}/master-categories", json={"name": name, **fields},
                          headers=admin.headers), 201)["master_category"]


def new_sub(client, admin: Actor, master_id: int, name: str = "Machine Learning", **fields) -> dict:
    return ok(client.post(f"{API}/subcategories",
                          json={"master_category_id": master_id, "name": name, **fields},
                          headers=admin.headers), 201)["subcategory"]


def new_course(client, who: Actor, title: str = "Python Basics", **fields) -> dict:
    return ok(client.post(f"{API}/courses", json={"title": title, **fields},
                          headers=who.headers), 201)["course"]


def new_module(client, who: Actor, course_id: int, title: str = "Module", **fields) -> dict:
    return ok(client.post(f"{API}/courses/{course_id}/modules", json={"title": title, **fields},
                          headers=who.headers), 201)["module"]


def new_lesson(client, who: Actor, module_id: int, title: str = "Lesson", **fields) -> dict:
    return ok(client.post(f"{API}/lessons/create-lessons/{module_id}",
                          json={"title": title, **fields}, headers=who.headers), 201)["lesson"]


def publish(client, who: Actor, course_id: int) -> dict:
    return ok(client.put(f"{API}/courses/{course_id}", json={"status": "published"},
                         headers=who.headers))["course"]


@dataclass(frozen=True)
class Published:
    course_id: int
    module_id: int
    lesson_id: int


@pytest.fixture
def make_published(client):
    """make_published(instructor, title) -> ids of a published course with a module and a lesson,
    built through the API."""

    def _make(owner: Actor, title: str = "Published Course") -> Published:
        course = new_course(client, owner, title)
        module = new_module(client, owner, course["id"])
        lesson = new_lesson(client, owner, module["id"], content="Body",
                            video_url="https://videos.example.com/1.mp4")
        publish(client, owner, course["id"])
        return Published(course["id"], module["id"], lesson["id"])

    return _make


def module_order(app, course_id: int) -> list[tuple[int, int]]:
    """[(module id, position)] of a course, in display order."""
    with app.app_context():
        return [tuple(row) for row in db.session.execute(
            select(Module.id, Module.position).where(Module.course_id == course_id)
            .order_by(Module.position, Module.id))]


def lesson_order(app, module_id: int) -> list[tuple[int, int]]:
    with app.app_context():
        return [tuple(row) for row in db.session.execute(
            select(Lesson.id, Lesson.position).where(Lesson.module_id == module_id)
            .order_by(Lesson.position, Lesson.id))]


def assert_gap_free(order: list[tuple[int, int]]) -> list[int]:
    """The positions are 0..n-1; returns the ids in order."""
    assert [position for _, position in order] == list(range(len(order)))
    return [item_id for item_id, _ in order]


# --- master categories ------------------------------------------------------------------------

MASTER_PATHS = {
    "rest": {"create": ("POST", ""), "list": ("GET", ""), "get": ("GET", "/{id}"),
             "update": ("PUT", "/{id}"), "delete": ("DELETE", "/{id}")},
    "alias": {"create": ("POST", "/create-mastercategories"),
              "list": ("POST", "/get-mastercategories"),
              "get": ("POST", "/get-mastercategories/{id}"),
              "update": ("PUT", "/update-mastercategories/{id}"),
              "delete": ("DELETE", "/delete-mastercategories/{id}")},
}
SUB_PATHS = {
    "rest": MASTER_PATHS["rest"],
    "alias": {"create": ("POST", "/create-subcategories"),
              "list": ("POST", "/get-subcategories"),
              "get": ("POST", "/get-subcategories/{id}"),
              "update": ("PUT", "/update-subcategories/{id}"),
              "delete": ("DELETE", "/delete-subcategories/{id}")},
}


def call(client, base: str, paths: dict, action: str, headers=None, json=None, **ids):
    method, path = paths[action]
    return client.open(f"{API}{base}{path.format(**ids)}", method=method, json=json,
                       headers=headers or {})


@pytest.mark.parametrize("route_set", ["rest", "alias"])
def test_admin_manages_a_master_category(app, client, admin, route_set):
    paths = MASTER_PATHS[route_set]
    body = ok(call(client, "/master-categories", paths, "create", admin.headers,
                   {"name": "Data Science", "description": "Numbers", "position": 3}), 201)
    created = body["master_category"]
    assert body["message"]
    assert created["name"] == "Data Science" and created["slug"] == "data-science"
    assert created["position"] == 3 and created["is_active"] is True
    with app.app_context():
        row = db.session.get(MasterCategory, created["id"])
        assert (row.name, row.slug, row.description) == ("Data Science", "data-science", "Numbers")

    listed = ok(call(client, "/master-categories", paths, "list", admin.headers))
    assert [c["id"] for c in listed["master_categories"]] == [created["id"]]
    assert listed["pagination"]["total"] == 1

    got = ok(call(client, "/master-categories", paths, "get", admin.headers, id=created["id"]))
    assert got["master_category"]["name"] == "Data Science"
    assert got["master_category"]["subcategories"] == []

    updated = ok(call(client, "/master-categories", paths, "update", admin.headers,
                      {"name": "Data & AI", "position": 1}, id=created["id"]))["master_category"]
    assert (updated["name"], updated["slug"], updated["position"]) == ("Data & AI", "data-ai", 1)
    with app.app_context():
        row = db.session.get(MasterCategory, created["id"])
        assert (row.name, row.slug, row.position) == ("Data & AI", "data-ai", 1)

    assert ok(call(client, "/master-categories", paths, "delete", admin.headers,
                   id=created["id"]))["message"]
    assert count(app, MasterCategory) == 0
    error(call(client, "/master-categories", paths, "get", admin.headers, id=created["id"]),
          404, "not_found")


def test_every_master_category_read_path_answers(client, admin):
    first = new_master(client, admin, "Business")
    second = new_master(client, admin, "Art", is_active=False)
    for method, path in (("GET", ""), ("GET", "/get-mastercategories"),
                         ("POST", "/get-mastercategories")):
        listed = ok(client.open(f"{API}/master-categories{path}", method=method,
                                headers=admin.headers))
        assert {c["id"] for c in listed["master_categories"]} == {first["id"], second["id"]}
    for method, path in (("GET", "/{id}"), ("GET", "/get-mastercategories/{id}"),
                         ("POST", "/get-mastercategories/{id}")):
        got = ok(client.open(f"{API}/master-categories{path.format(id=first['id'])}",
                             method=method, headers=admin.headers))
        assert got["master_category"]["id"] == first["id"]
    # The POST read alias takes its filters from the JSON body.
    inactive = ok(client.post(f"{API}/master-categories/get-mastercategories",
                              json={"is_active": False}, headers=admin.headers))
    assert [c["id"] for c in inactive["master_categories"]] == [second["id"]]


def test_same_slug_base_gets_a_distinct_slug(client, admin):
    assert new_master(client, admin, "C++")["slug"] == "c"
    assert new_master(client, admin, "C")["slug"] == "c-2"


@pytest.mark.parametrize("role", ["student", "instructor", None])
def test_master_categories_are_admin_only(app, client, actor, admin, role):
    existing = new_master(client, admin, "Existing")
    headers = actor(role).headers if role else {}
    status, code = (403, "role_required") if role else (401, "token_missing")
    mid = existing["id"]
    for route_set in ("rest", "alias"):
        paths = MASTER_PATHS[route_set]
        error(call(client, "/master-categories", paths, "create", headers, {"name": "New"}),
              status, code)
        error(call(client, "/master-categories", paths, "list", headers), status, code)
        error(call(client, "/master-categories", paths, "get", headers, id=mid), status, code)
        error(call(client, "/master-categories", paths, "update", headers, {"name": "Renamed"},
                   id=mid), status, code)
        error(call(client, "/master-categories", paths, "delete", headers, id=mid), status, code)
    with app.app_context():
        assert db.session.scalars(select(MasterCategory.name)).all() == ["Existing"]


@pytest.mark.parametrize("route_set", ["rest", "alias"])
def test_duplicate_master_names_conflict_case_insensitively(app, client, admin, route_set):
    paths = MASTER_PATHS[route_set]
    new_master(client, admin, "Data Science")
    other = new_master(client, admin, "Design")
    body = error(call(client, "/master-categories", paths, "create", admin.headers,
                      {"name": "data SCIENCE"}), 409)
    assert "name" in body["details"]
    error(call(client, "/master-categories", paths, "update", admin.headers,
               {"name": "DATA science"}, id=other["id"]), 409)
    with app.app_context():
        assert sorted(db.session.scalars(select(MasterCategory.name))) == ["Data Science", "Design"]
    # Changing only the case of one's own name is not a conflict.
    renamed = ok(call(client, "/master-categories", paths, "update", admin.headers,
                      {"name": "DESIGN"}, id=other["id"]))
    assert renamed["master_category"]["name"] == "DESIGN"


def test_duplicate_names_conflict_case_insensitively_beyond_ascii(app, client, admin):
    master = new_master(client, admin, "Économie")
    error(client.post(f"{API}/master-categories", json={"name": "économie"},
                      headers=admin.headers), 409)
    new_sub(client, admin, master["id"], "Éthique")
    error(client.post(f"{API}/subcategories",
                      json={"master_category_id": master["id"], "name": "éthique"},
                      headers=admin.headers), 409)
    assert count(app, MasterCategory) == 1 and count(app, Subcategory) == 1


@pytest.mark.parametrize("body, field", [
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 121}, "name"),
    ({"name": "Fine", "position": -1}, "position"),
    ({"name": "Fine", "icon_url": "javascript:alert(1)"}, "icon_url"),
    ({}, "name"),
])
def test_invalid_master_category_is_422(app, client, admin, body, field):
    for path in ("", "/create-mastercategories"):
        response = client.post(f"{API}/master-categories{path}", json=body, headers=admin.headers)
        assert field in error(response, 422, "validation_error")["details"]
    assert count(app, MasterCategory) == 0


def test_master_category_name_of_120_characters_is_accepted(client, admin):
    assert new_master(client, admin, "x" * 120)["name"] == "x" * 120


def test_invalid_master_category_update_is_422(app, client, admin):
    category = new_master(client, admin, "Data")
    for body in ({"name": ""}, {"name": "y" * 121}, {"position": -1}):
        error(client.put(f"{API}/master-categories/{category['id']}", json=body,
                         headers=admin.headers), 422, "validation_error")
    with app.app_context():
        row = db.session.get(MasterCategory, category["id"])
        assert (row.name, row.position) == ("Data", 0)


@pytest.mark.parametrize("path", ["/{id}", "/delete-mastercategories/{id}"])
def test_master_category_with_subcategories_is_not_deleted(app, client, admin, path):
    master = new_master(client, admin)
    sub = new_sub(client, admin, master["id"])
    body = error(client.delete(f"{API}/master-categories{path.format(id=master['id'])}",
                               headers=admin.headers), 409, "has_children")
    assert body["details"]["subcategories"] == 1
    with app.app_context():
        assert db.session.get(MasterCategory, master["id"]) is not None
        assert db.session.get(Subcategory, sub["id"]) is not None


def test_unknown_master_category_is_404(client, admin):
    for method, path in (("GET", "/999999"), ("PUT", "/update-mastercategories/999999"),
                         ("DELETE", "/delete-mastercategories/999999")):
        error(client.open(f"{API}/master-categories{path}", method=method, json={"name": "X"},
                          headers=admin.headers), 404, "not_found")


# --- subcategories ----------------------------------------------------------------------------

@pytest.mark.parametrize("route_set", ["rest", "alias"])
def test_admin_manages_a_subcategory(app, client, admin, route_set):
    paths = SUB_PATHS[route_set]
    master = new_master(client, admin, "Data Science")
    body = ok(call(client, "/subcategories", paths, "create", admin.headers,
                   {"master_category_id": master["id"], "name": "Machine Learning"}), 201)
    sub = body["subcategory"]
    assert body["message"]
    assert (sub["master_category_id"], sub["name"], sub["slug"]) == (
        master["id"], "Machine Learning", "machine-learning")
    with app.app_context():
        row = db.session.get(Subcategory, sub["id"])
        assert (row.master_category_id, row.slug) == (master["id"], "machine-learning")

    listed = ok(call(client, "/subcategories", paths, "list", admin.headers))
    assert [s["id"] for s in listed["subcategories"]] == [sub["id"]]
    got = ok(call(client, "/subcategories", paths, "get", admin.headers, id=sub["id"]))
    assert got["subcategory"]["name"] == "Machine Learning"
    master_view = ok(client.get(f"{API}/master-categories/{master['id']}", headers=admin.headers))
    assert [s["id"] for s in master_view["master_category"]["subcategories"]] == [sub["id"]]

    other_master = new_master(client, admin, "Engineering")
    updated = ok(call(client, "/subcategories", paths, "update", admin.headers,
                      {"name": "Deep Learning", "master_category_id": other_master["id"]},
                      id=sub["id"]))["subcategory"]
    assert (updated["name"], updated["slug"], updated["master_category_id"]) == (
        "Deep Learning", "deep-learning", other_master["id"])
    with app.app_context():
        row = db.session.get(Subcategory, sub["id"])
        assert (row.name, row.master_category_id) == ("Deep Learning", other_master["id"])

    assert ok(call(client, "/subcategories", paths, "delete", admin.headers, id=sub["id"]))
    assert count(app, Subcategory) == 0
    error(call(client, "/subcategories", paths, "get", admin.headers, id=sub["id"]), 404)


def test_subcategory_lists_filter_by_master_category(client, admin):
    data = new_master(client, admin, "Data")
    art = new_master(client, admin, "Art")
    ml = new_sub(client, admin, data["id"], "ML")
    stats = new_sub(client, admin, data["id"], "Statistics")
    painting = new_sub(client, admin, art["id"], "Painting")

    everything = ok(client.get(f"{API}/subcategories", headers=admin.headers))
    assert {s["id"] for s in everything["subcategories"]} == {ml["id"], stats["id"], painting["id"]}
    by_query = ok(client.get(f"{API}/subcategories/get-subcategories",
                             query_string={"master_category_id": art["id"]},
                             headers=admin.headers))
    assert [s["id"] for s in by_query["subcategories"]] == [painting["id"]]
    by_body = ok(client.post(f"{API}/subcategories/get-subcategories",
                             json={"master_category_id": data["id"]}, headers=admin.headers))
    assert [s["id"] for s in by_body["subcategories"]] == [ml["id"], stats["id"]]
    assert by_body["pagination"]["total"] == 2
    for method, path in (("GET", "/{id}"), ("GET", "/get-subcategories/{id}"),
                         ("POST", "/get-subcategories/{id}")):
        got = ok(client.open(f"{API}/subcategories{path.format(id=ml['id'])}", method=method,
                             headers=admin.headers))
        assert got["subcategory"]["id"] == ml["id"]
    error(client.post(f"{API}/subcategories/get-subcategories",
                      json={"master_category_id": "lots"}, headers=admin.headers), 422)


@pytest.mark.parametrize("role", ["student", "instructor", None])
def test_subcategories_are_admin_only(app, client, actor, admin, role):
    master = new_master(client, admin)
    sub = new_sub(client, admin, master["id"], "Existing")
    headers = actor(role).headers if role else {}
    status = 403 if role else 401
    for route_set in ("rest", "alias"):
        paths = SUB_PATHS[route_set]
        error(call(client, "/subcategories", paths, "create", headers,
                   {"master_category_id": master["id"], "name": "New"}), status)
        error(call(client, "/subcategories", paths, "list", headers), status)
        error(call(client, "/subcategories", paths, "get", headers, id=sub["id"]), status)
        error(call(client, "/subcategories", paths, "update", headers, {"name": "Renamed"},
                   id=sub["id"]), status)
        error(call(client, "/subcategories", paths, "delete", headers, id=sub["id"]), status)
    with app.app_context():
        assert db.session.scalars(select(Subcategory.name)).all() == ["Existing"]


def test_duplicate_subcategory_names_conflict_within_a_master_category(app, client, admin):
    data = new_master(client, admin, "Data")
    art = new_master(client, admin, "Art")
    new_sub(client, admin, data["id"], "Machine Learning")
    for path in ("", "/create-subcategories"):
        body = error(client.post(f"{API}/subcategories{path}",
                                 json={"master_category_id": data["id"], "name": "machine LEARNING"},
                                 headers=admin.headers), 409)
        assert "name" in body["details"]
    # The same name under another master category is fine, with a slug of its own.
    twin = new_sub(client, admin, art["id"], "Machine Learning")
    assert twin["slug"] == "machine-learning-2"
    # Moving it next to its namesake is the same conflict.
    error(client.put(f"{API}/subcategories/{twin['id']}",
                     json={"master_category_id": data["id"]}, headers=admin.headers), 409)
    with app.app_context():
        assert db.session.get(Subcategory, twin["id"]).master_category_id == art["id"]
    assert count(app, Subcategory) == 2


@pytest.mark.parametrize("body, field", [
    ({"master_category_id": 999999, "name": "Orphan"}, "master_category_id"),
    ({"name": "No master"}, "master_category_id"),
    ({"master_category_id": "{master}", "name": ""}, "name"),
    ({"master_category_id": "{master}", "name": "z" * 121}, "name"),
    ({"master_category_id": "{master}", "name": "Fine", "position": -1}, "position"),
])
def test_invalid_subcategory_is_422(app, client, admin, body, field):
    master = new_master(client, admin)
    body = {k: (master["id"] if v == "{master}" else v) for k, v in body.items()}
    for path in ("", "/create-subcategories"):
        response = client.post(f"{API}/subcategories{path}", json=body, headers=admin.headers)
        assert field in error(response, 422, "validation_error")["details"]
    assert count(app, Subcategory) == 0


def test_moving_a_subcategory_to_an_unknown_master_is_422(app, client, admin):
    master = new_master(client, admin)
    sub = new_sub(client, admin, master["id"])
    body = error(client.put(f"{API}/subcategories/update-subcategories/{sub['id']}",
                            json={"master_category_id": 999999}, headers=admin.headers), 422)
    assert "master_category_id" in body["details"]
    with app.app_context():
        assert db.session.get(Subcategory, sub["id"]).master_category_id == master["id"]


@pytest.mark.parametrize("path", ["/{id}", "/delete-subcategories/{id}"])
def test_subcategory_with_courses_is_not_deleted(app, client, admin, instructor, path):
    master = new_master(client, admin)
    sub = new_sub(client, admin, master["id"])
    course = new_course(client, instructor, subcategory_id=sub["id"])
    body = error(client.delete(f"{API}/subcategories{path.format(id=sub['id'])}",
                               headers=admin.headers), 409, "has_children")
    assert body["details"]["courses"] == 1
    with app.app_context():
        assert db.session.get(Subcategory, sub["id"]) is not None
        assert db.session.get(Course, course["id"]).subcategory_id == sub["id"]


# --- courses: creating ------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", "/create-courses"])
def test_instructor_creates_a_draft_course(app, client, instructor, admin, path):
    master = new_master(client, admin)
    sub = new_sub(client, admin, master["id"])
    response = client.post(f"{API}/courses{path}", headers=instructor.headers, json={
        "title": "  Python for Data Science  ", "price": 49.99, "currency": "inr",
        "mode_of_conduct": "online", "difficulty": "intermediate", "subcategory_id": sub["id"],
        "learning_outcomes": ["pandas", "plots"], "status": "published"})
    body = ok(response, 201)
    course = body["course"]
    assert body["message"]
    assert course["title"] == "Python for Data Science"
    assert course["slug"] == "python-for-data-science"
    assert course["status"] == "draft" and course["published_at"] is None
    assert course["instructor_id"] == instructor.id
    assert course["price"] == 49.99 and course["currency"] == "INR"
    assert course["mode_of_conduct"] == "ONLINE" and course["difficulty"] == "intermediate"
    assert course["subcategory_id"] == sub["id"]
    assert course["learning_outcomes"] == ["pandas", "plots"]
    with app.app_context():
        row = db.session.get(Course, course["id"])
        assert row.status == "draft" and row.instructor_id == instructor.id
        assert Decimal(row.price) == Decimal("49.99") and row.currency == "INR"
        assert row.mode_of_conduct == "ONLINE" and row.slug == "python-for-data-science"


def test_courses_with_the_same_title_get_distinct_slugs(app, client, instructor, other_instructor):
    first = new_course(client, instructor, "Intro to SQL")
    second = new_course(client, other_instructor, "Intro to SQL")
    third = ok(client.post(f"{API}/courses/create-courses", json={"title": "Intro to SQL"},
                           headers=instructor.headers), 201)["course"]
    slugs = [first["slug"], second["slug"], third["slug"]]
    assert slugs[0] == "intro-to-sql"
    assert len(set(slugs)) == 3 and all(s.startswith("intro-to-sql") for s in slugs)
    with app.app_context():
        assert sorted(db.session.scalars(select(Course.slug))) == sorted(slugs)


def test_student_and_guest_cannot_create_courses(app, client, student):
    for path in ("", "/create-courses"):
        error(client.post(f"{API}/courses{path}", json={"title": "Nope"},
                          headers=student.headers), 403, "role_required")
        error(client.post(f"{API}/courses{path}", json={"title": "Nope"}), 401, "token_missing")
    assert count(app, Course) == 0


@pytest.mark.parametrize("fields, field", [
    ({"currency": "XYZ"}, "currency"),
    ({"currency": "US"}, "currency"),
    ({"price": -1}, "price"),
    ({"price": 49.999}, "price"),
    ({"price": "10.005"}, "price"),
    ({"price": 100_000_000}, "price"),
    ({"title": "t" * 201}, "title"),
    ({"title": ""}, "title"),
    ({"difficulty": "expert"}, "difficulty"),
    ({"mode_of_conduct": "hybrid"}, "mode_of_conduct"),
    ({"subcategory_id": 999999}, "subcategory_id"),
    ({"thumbnail_url": "javascript:alert(1)"}, "thumbnail_url"),
])
def test_invalid_course_is_422(app, client, instructor, fields, field):
    body = {"title": "Valid title", **fields}
    for path in ("", "/create-courses"):
        response = client.post(f"{API}/courses{path}", json=body, headers=instructor.headers)
        assert field in error(response, 422)["details"]
    assert count(app, Course) == 0


def test_title_of_200_characters_is_accepted(client, instructor):
    assert new_course(client, instructor, "t" * 200)["title"] == "t" * 200


def test_admin_creates_a_course_for_an_instructor(app, client, admin, instructor, student):
    course = new_course(client, admin, "Delegated", instructor_id=instructor.id)
    assert course["instructor_id"] == instructor.id
    own = new_course(client, admin, "Admin's own")
    assert own["instructor_id"] == admin.id
    body = error(client.post(f"{API}/courses", json={"title": "To a student",
                                                      "instructor_id": student.id},
                             headers=admin.headers), 422)
    assert "instructor_id" in body["details"]
    with app.app_context():
        assert db.session.get(Course, course["id"]).instructor_id == instructor.id
        assert db.session.scalar(select(func.count()).select_from(Course)) == 2


def test_instructor_cannot_create_a_course_for_someone_else(app, client, instructor,
                                                          other_instructor):
    course = new_course(client, instructor, "Mine", instructor_id=other_instructor.id)
    assert course["instructor_id"] == instructor.id
    with app.app_context():
        assert db.session.get(Course, course["id"]).instructor_id == instructor.id


# --- courses: updating and publishing ---------------------------------------------------------

@pytest.mark.parametrize("path", ["/{id}", "/update-courses/{id}"])
def test_course_update_is_for_the_owner_and_admins(app, client, instructor, other_instructor,
                                                   student, admin, path):
    course = new_course(client, instructor, "Original")
    url = f"{API}/courses{path.format(id=course['id'])}"

    updated = ok(client.put(url, json={"title": "Renamed", "price": 10, "currency": "eur"},
                            headers=instructor.headers))
    assert updated["course"]["title"] == "Renamed"
    assert (updated["course"]["price"], updated["course"]["currency"]) == (10.0, "EUR")

    error(client.put(url, json={"title": "Hijacked"}, headers=other_instructor.headers),
          403, "not_course_owner")
    error(client.put(url, json={"title": "Hijacked"}, headers=student.headers), 403)
    error(client.put(url, json={"title": "Hijacked"}), 401)
    with app.app_context():
        row = db.session.get(Course, course["id"])
        assert (row.title, row.currency) == ("Renamed", "EUR")

    by_admin = ok(client.put(url, json={"short_description": "Checked"}, headers=admin.headers))
    assert by_admin["course"]["short_description"] == "Checked"
    with app.app_context():
        row = db.session.get(Course, course["id"])
        assert (row.short_description, row.instructor_id) == ("Checked", instructor.id)

    error(client.put(url, json={"price": -5}, headers=instructor.headers), 422)
    error(client.put(url, json={"currency": "XYZ"}, headers=instructor.headers), 422)
    error(client.put(f"{API}/courses/999999", json={"title": "x"}, headers=admin.headers), 404)


def test_publishing_needs_a_lesson(app, client, instructor):
    course = new_course(client, instructor, "Empty")
    body = error(client.put(f"{API}/courses/{course['id']}",
                            json={"status": "published", "title": "Changed"},
                            headers=instructor.headers), 422, "course_empty")
    assert "status" in body["details"]
    with app.app_context():
        row = db.session.get(Course, course["id"])
        assert (row.status, row.title, row.published_at) == ("draft", "Empty", None)

    module = new_module(client, instructor, course["id"])
    # A module without a lesson is still empty.
    error(client.put(f"{API}/courses/update-courses/{course['id']}", json={"status": "published"},
                     headers=instructor.headers), 422, "course_empty")
    new_lesson(client, instructor, module["id"])
    published = ok(client.put(f"{API}/courses/update-courses/{course['id']}",
                              json={"status": "published"}, headers=instructor.headers))["course"]
    assert published["status"] == "published" and published["published_at"]
    with app.app_context():
        row = db.session.get(Course, course["id"])
        assert row.status == "published" and row.published_at is not None


def test_drafts_are_hidden_from_everyone_but_owner_and_admin(client, instructor,
                                                             other_instructor, student, admin):
    draft = new_course(client, instructor, "Secret draft")
    url = f"{API}/courses/{draft['id']}"
    error(client.get(url), 404, "not_found")
    error(client.get(url, headers=student.headers), 404, "not_found")
    error(client.get(url, headers=other_instructor.headers), 404, "not_found")
    mine = ok(client.get(url, headers=instructor.headers))["course"]
    assert (mine["id"], mine["status"], mine["access"]) == (draft["id"], "draft", "owner")
    admins = ok(client.get(url, headers=admin.headers))["course"]
    assert (admins["id"], admins["access"]) == (draft["id"], "admin")
    # Nor do the draft's outline and prerequisites show.
    for path in ("/modules", "/prerequisites"):
        error(client.get(url + path), 404)
        error(client.get(url + path, headers=other_instructor.headers), 404)
        ok(client.get(url + path, headers=instructor.headers))
    error(client.get(f"{API}/prerequisites/get-prerequisites/{draft['id']}"), 404)


def test_published_course_detail_is_public(client, instructor, student, make_published):
    ids = make_published(instructor, "Open course")
    for headers in ({}, student.headers):
        course = ok(client.get(f"{API}/courses/{ids.course_id}", headers=headers))["course"]
        assert course["status"] == "published" and course["lesson_count"] == 1
        lesson = course["modules"][0]["lessons"][0]
        # Not enrolled: the outline only.
        assert lesson["id"] == ids.lesson_id and lesson["video_url"] is None
        assert lesson["content"] is None
    error(client.get(f"{API}/courses/999999"), 404)


def test_catalog_lists_published_courses_only(client, instructor, make_published):
    new_course(client, instructor, "Draft one")
    live = make_published(instructor, "Live one")
    archived = make_published(instructor, "Old one")
    ok(client.put(f"{API}/courses/{archived.course_id}", json={"status": "archived"},
                  headers=instructor.headers))
    listed = ok(client.get(f"{API}/courses"))
    assert [c["id"] for c in listed["courses"]] == [live.course_id]
    assert listed["courses"][0]["status"] == "published"
    assert listed["pagination"]["total"] == 1
    # A status filter is not a way round it.
    for status in ("draft", "archived"):
        filtered = ok(client.get(f"{API}/courses", query_string={"status": status}))
        assert [c["id"] for c in filtered["courses"]] == [live.course_id]


def test_instructor_view_lists_own_courses_in_every_status(client, instructor, other_instructor,
                                                           admin, student, make_published):
    draft = new_course(client, instructor, "My draft")
    live = make_published(instructor, "My live course")
    foreign = new_course(client, other_instructor, "Not mine")

    mine = ok(client.get(f"{API}/courses/get-courses", headers=instructor.headers))
    assert {c["id"] for c in mine["courses"]} == {draft["id"], live.course_id}
    assert mine["pagination"]["total"] == 2
    drafts = ok(client.get(f"{API}/courses/get-courses", query_string={"status": "draft"},
                           headers=instructor.headers))
    assert [c["id"] for c in drafts["courses"]] == [draft["id"]]
    everyone = ok(client.get(f"{API}/courses/get-courses", headers=admin.headers))
    assert {c["id"] for c in everyone["courses"]} == {draft["id"], live.course_id, foreign["id"]}

    own = ok(client.get(f"{API}/courses/get-courses/{draft['id']}", headers=instructor.headers))
    assert own["course"]["id"] == draft["id"]
    error(client.get(f"{API}/courses/get-courses/{foreign['id']}", headers=instructor.headers),
          403, "not_course_owner")
    assert ok(client.get(f"{API}/courses/get-courses/{foreign['id']}",
                         headers=admin.headers))["course"]["id"] == foreign["id"]
    error(client.get(f"{API}/courses/get-courses", headers=student.headers), 403)
    error(client.get(f"{API}/courses/get-courses"), 401)


def test_my_teaching_courses(client, instructor, other_instructor, student, make_published):
    draft = new_course(client, instructor, "Draft")
    live = make_published(instructor)
    new_course(client, other_instructor, "Someone else's")
    teaching = ok(client.get(f"{API}/users/my-teaching-courses", headers=instructor.headers))
    assert {c["id"] for c in teaching["courses"]} == {draft["id"], live.course_id}
    assert all(c["instructor_id"] == instructor.id for c in teaching["courses"])
    error(client.get(f"{API}/users/my-teaching-courses", headers=student.headers), 403)
    error(client.get(f"{API}/users/my-teaching-courses"), 401)


# --- courses: deleting ------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/{id}", "/delete-courses/{id}"])
def test_deleting_a_course_nobody_took_removes_it(app, client, instructor, make_published, path):
    ids = make_published(instructor)
    keep = make_published(instructor, "Kept")
    body = ok(client.delete(f"{API}/courses{path.format(id=ids.course_id)}",
                            headers=instructor.headers))
    assert body["message"] == "Course deleted"
    with app.app_context():
        assert db.session.get(Course, ids.course_id) is None
        assert db.session.get(Module, ids.module_id) is None
        assert db.session.get(Lesson, ids.lesson_id) is None
        assert db.session.get(Lesson, keep.lesson_id) is not None
    error(client.get(f"{API}/courses/{ids.course_id}", headers=instructor.headers), 404)


@pytest.mark.parametrize("path", ["/{id}", "/delete-courses/{id}"])
def test_deleting_a_course_with_enrollments_archives_it(app, client, instructor, student,
                                                        make_published, path):
    ids = make_published(instructor)
    with app.app_context():
        enrollment = Enrollment(user_id=student.id, course_id=ids.course_id)
        db.session.add(enrollment)
        db.session.commit()
        enrollment_id = enrollment.id
    body = ok(client.delete(f"{API}/courses{path.format(id=ids.course_id)}",
                            headers=instructor.headers))
    assert body["status"] == "archived" and body["message"]
    with app.app_context():
        course = db.session.get(Course, ids.course_id)
        assert course is not None and course.status == "archived"
        enrollment = db.session.get(Enrollment, enrollment_id)
        assert (enrollment.user_id, enrollment.course_id, enrollment.status) == (
            student.id, ids.course_id, "active")
        assert db.session.get(Lesson, ids.lesson_id) is not None
    listed = ok(client.get(f"{API}/courses"))
    assert listed["courses"] == []


def test_deleting_a_prerequisite_course_drops_only_the_link(app, client, instructor,
                                                          make_published):
    basics = make_published(instructor, "Basics").course_id
    advanced = make_published(instructor, "Advanced").course_id
    ok(client.post(f"{API}/courses/{advanced}/prerequisites",
                   json={"prerequisite_course_ids": [basics]}, headers=instructor.headers), 201)
    ok(client.delete(f"{API}/courses/{basics}", headers=instructor.headers))
    assert ok(client.get(f"{API}/prerequisites/get-prerequisites/{advanced}"))["prerequisites"] == []
    with app.app_context():
        assert db.session.get(Course, basics) is None
        assert db.session.get(Course, advanced).status == "published"
    assert count(app, CoursePrerequisite) == 0


def test_only_owner_or_admin_deletes_a_course(app, client, instructor, other_instructor, student,
                                              admin):
    course = new_course(client, instructor)
    for path in ("/{id}", "/delete-courses/{id}"):
        url = f"{API}/courses{path.format(id=course['id'])}"
        error(client.delete(url, headers=other_instructor.headers), 403, "not_course_owner")
        error(client.delete(url, headers=student.headers), 403)
        error(client.delete(url), 401)
    assert count(app, Course) == 1
    assert ok(client.delete(f"{API}/courses/{course['id']}", headers=admin.headers))
    assert count(app, Course) == 0
    error(client.delete(f"{API}/courses/{course['id']}", headers=admin.headers), 404)


# --- modules ----------------------------------------------------------------------------------

def test_modules_append_and_insert_keep_positions_gap_free(app, client, instructor):
    course = new_course(client, instructor)
    cid = course["id"]
    first = new_module(client, instructor, cid, "First")
    second = ok(client.post(f"{API}/modules/create-modules/{cid}", json={"title": "Second"},
                            headers=instructor.headers), 201)["module"]
    third = new_module(client, instructor, cid, "Third")
    assert (first["position"], second["position"], third["position"]) == (0, 1, 2)
    assert second["course_id"] == cid
    assert assert_gap_free(module_order(app, cid)) == [first["id"], second["id"], third["id"]]

    front = new_module(client, instructor, cid, "Front", position=0)
    assert front["position"] == 0
    assert assert_gap_free(module_order(app, cid)) == [
        front["id"], first["id"], second["id"], third["id"]]
    middle = ok(client.post(f"{API}/modules/create-modules/{cid}",
                            json={"title": "Middle", "position": 2},
                            headers=instructor.headers), 201)["module"]
    assert middle["position"] == 2
    # Past the end is the end.
    last = new_module(client, instructor, cid, "Last", position=99)
    assert last["position"] == 5
    assert assert_gap_free(module_order(app, cid)) == [
        front["id"], first["id"], middle["id"], second["id"], third["id"], last["id"]]
    error(client.post(f"{API}/courses/{cid}/modules", json={"title": "Bad", "position": -1},
                      headers=instructor.headers), 422)
    error(client.post(f"{API}/courses/{cid}/modules", json={"title": ""},
                      headers=instructor.headers), 422)
    error(client.post(f"{API}/courses/999999/modules", json={"title": "Lost"},
                      headers=instructor.headers), 404)
    assert len(module_order(app, cid)) == 6


def test_moving_a_module_renumbers_its_siblings(app, client, instructor):
    cid = new_course(client, instructor)["id"]
    a, b, c, d = (new_module(client, instructor, cid, t)["id"] for t in "ABCD")
    moved = ok(client.put(f"{API}/modules/{a}", json={"position": 2},
                          headers=instructor.headers))["module"]
    assert moved["position"] == 2
    assert assert_gap_free(module_order(app, cid)) == [b, c, a, d]
    ok(client.put(f"{API}/modules/update-modules/{d}", json={"position": 0, "title": "D2"},
                  headers=instructor.headers))
    assert assert_gap_free(module_order(app, cid)) == [d, b, c, a]
    with app.app_context():
        assert db.session.get(Module, d).title == "D2"


def test_reordering_modules(app, client, instructor, other_instructor):
    cid = new_course(client, instructor)["id"]
    a, b, c = (new_module(client, instructor, cid, t)["id"] for t in "ABC")
    other_cid = new_course(client, other_instructor, "Other")["id"]
    stranger = new_module(client, other_instructor, other_cid)["id"]
    url = f"{API}/courses/{cid}/modules/reorder"

    body = ok(client.put(url, json={"ids": [c, a, b]}, headers=instructor.headers))
    assert [(m["id"], m["position"]) for m in body["modules"]] == [(c, 0), (a, 1), (b, 2)]
    assert assert_gap_free(module_order(app, cid)) == [c, a, b]

    for ids in ([c, a], [c, a, b, stranger], [c, a, a], [c, a, b, 999999], []):
        error(client.put(url, json={"ids": ids}, headers=instructor.headers), 422)
    assert assert_gap_free(module_order(app, cid)) == [c, a, b]
    assert module_order(app, other_cid) == [(stranger, 0)]


def test_module_deletion(app, client, instructor):
    cid = new_course(client, instructor)["id"]
    a, b, c = (new_module(client, instructor, cid, t)["id"] for t in "ABC")
    lesson = new_lesson(client, instructor, b)
    body = error(client.delete(f"{API}/modules/{b}", headers=instructor.headers), 409,
                 "has_children")
    assert body["details"]["lessons"] == 1
    with app.app_context():
        assert db.session.get(Module, b) is not None
        assert db.session.get(Lesson, lesson["id"]) is not None

    assert ok(client.delete(f"{API}/modules/delete-modules/{a}", headers=instructor.headers))
    assert assert_gap_free(module_order(app, cid)) == [b, c]
    with app.app_context():
        assert db.session.get(Module, a) is None
    error(client.delete(f"{API}/modules/{a}", headers=instructor.headers), 404)


# --- lessons ----------------------------------------------------------------------------------

def test_lessons_are_created_in_order(app, client, instructor):
    cid = new_course(client, instructor)["id"]
    mid = new_module(client, instructor, cid)["id"]
    first = new_lesson(client, instructor, mid, "One", content="Text", duration_minutes=12,
                       video_url="https://videos.example.com/1.mp4", is_preview=True)
    assert (first["module_id"], first["position"], first["duration_minutes"]) == (mid, 0, 12)
    assert first["video_url"] == "https://videos.example.com/1.mp4" and first["is_preview"] is True
    second = new_lesson(client, instructor, mid, "Two")
    front = new_lesson(client, instructor, mid, "Zero", position=0)
    assert (second["position"], front["position"]) == (1, 0)
    assert assert_gap_free(lesson_order(app, mid)) == [front["id"], first["id"], second["id"]]
    with app.app_context():
        row = db.session.get(Lesson, first["id"])
        assert (row.title, row.content, row.is_preview) == ("One", "Text", True)
    error(client.post(f"{API}/lessons/create-lessons/999999", json={"title": "Lost"},
                      headers=instructor.headers), 404)


@pytest.mark.parametrize("video_url", ["javascript:alert(1)", "ftp://files.example.com/v.mp4",
                                       "not a url", "//example.com/v.mp4"])
def test_lesson_video_url_must_be_http(app, client, instructor, video_url):
    cid = new_course(client, instructor)["id"]
    mid = new_module(client, instructor, cid)["id"]
    body = error(client.post(f"{API}/lessons/create-lessons/{mid}",
                             json={"title": "Video", "video_url": video_url},
                             headers=instructor.headers), 422)
    assert "video_url" in body["details"]
    lesson = new_lesson(client, instructor, mid, video_url="http://videos.example.com/ok.mp4")
    error(client.put(f"{API}/lessons/update-lessons/{lesson['id']}", json={"video_url": video_url},
                     headers=instructor.headers), 422)
    with app.app_context():
        assert db.session.get(Lesson, lesson["id"]).video_url == "http://videos.example.com/ok.mp4"
        assert db.session.scalar(select(func.count()).select_from(Lesson)) == 1


def test_lesson_lists_show_own_lessons_only(client, instructor, other_instructor, admin, student):
    cid = new_course(client, instructor)["id"]
    mid = new_module(client, instructor, cid)["id"]
    mine = [new_lesson(client, instructor, mid, f"L{n}")["id"] for n in range(2)]
    other_cid = new_course(client, other_instructor, "Other")["id"]
    other_mid = new_module(client, other_instructor, other_cid)["id"]
    theirs = new_lesson(client, other_instructor, other_mid)["id"]

    listed = ok(client.get(f"{API}/lessons/get-lessons", headers=instructor.headers))
    assert [lesson["id"] for lesson in listed["lessons"]] == mine
    by_body = ok(client.post(f"{API}/lessons/get-lessons", json={"module_id": other_mid},
                             headers=instructor.headers))
    assert by_body["lessons"] == []
    everyone = ok(client.get(f"{API}/lessons/get-lessons", headers=admin.headers))
    assert {lesson["id"] for lesson in everyone["lessons"]} == {*mine, theirs}
    error(client.get(f"{API}/lessons/get-lessons", headers=student.headers), 403)
    error(client.get(f"{API}/lessons/get-lessons"), 401)


def test_reading_one_lesson(client, instructor, other_instructor, student, make_published):
    ids = make_published(instructor)
    for method in ("GET", "POST"):
        body = ok(client.open(f"{API}/lessons/get-lessons/{ids.lesson_id}", method=method,
                              headers=instructor.headers))
        assert body["lesson"]["id"] == ids.lesson_id and body["access"] == "owner"
        assert body["lesson"]["content"] == "Body"
        assert body["lesson"]["course_id"] == ids.course_id
    outline = ok(client.get(f"{API}/lessons/get-lessons/{ids.lesson_id}", headers=student.headers))
    assert outline["access"] == "guest" and outline["lesson"]["content"] is None
    assert outline["lesson"]["video_url"] is None
    error(client.get(f"{API}/lessons/get-lessons/{ids.lesson_id}"), 401)
    error(client.get(f"{API}/lessons/get-lessons/999999", headers=instructor.headers), 404)
    # A draft's lessons are as hidden as the draft.
    draft = new_course(client, instructor, "Draft")
    draft_lesson = new_lesson(client, instructor, new_module(client, instructor, draft["id"])["id"])
    error(client.get(f"{API}/lessons/get-lessons/{draft_lesson['id']}",
                     headers=other_instructor.headers), 404)


def test_updating_and_moving_lessons(app, client, instructor, other_instructor):
    cid = new_course(client, instructor)["id"]
    m1 = new_module(client, instructor, cid, "M1")["id"]
    m2 = new_module(client, instructor, cid, "M2")["id"]
    a, b, c = (new_lesson(client, instructor, m1, t)["id"] for t in "ABC")
    x, y = (new_lesson(client, instructor, m2, t)["id"] for t in "XY")

    changed = ok(client.put(f"{API}/lessons/update-lessons/{a}",
                            json={"title": "A2", "duration_minutes": 7, "position": 2},
                            headers=instructor.headers))["lesson"]
    assert (changed["title"], changed["duration_minutes"], changed["position"]) == ("A2", 7, 2)
    assert assert_gap_free(lesson_order(app, m1)) == [b, c, a]

    # To another module of the same course: both modules are renumbered.
    moved = ok(client.put(f"{API}/lessons/update-lessons/{b}", json={"module_id": m2, "position": 1},
                          headers=instructor.headers))["lesson"]
    assert (moved["module_id"], moved["position"]) == (m2, 1)
    assert assert_gap_free(lesson_order(app, m1)) == [c, a]
    assert assert_gap_free(lesson_order(app, m2)) == [x, b, y]
    ok(client.put(f"{API}/lessons/{c}", json={"module_id": m2}, headers=instructor.headers))
    assert assert_gap_free(lesson_order(app, m1)) == [a]
    assert assert_gap_free(lesson_order(app, m2)) == [x, b, y, c]

    # Never into a module of another course, even one the same instructor owns.
    own_other = new_module(client, instructor, new_course(client, instructor, "Second")["id"])["id"]
    foreign = new_module(client, other_instructor,
                         new_course(client, other_instructor, "Foreign")["id"])["id"]
    for target in (own_other, foreign):
        body = error(client.put(f"{API}/lessons/update-lessons/{a}", json={"module_id": target},
                                headers=instructor.headers), 422)
        assert "module_id" in body["details"]
    assert assert_gap_free(lesson_order(app, m1)) == [a]
    assert lesson_order(app, own_other) == [] and lesson_order(app, foreign) == []


def test_moving_a_lesson_to_an_unknown_module_is_422(app, client, instructor):
    mid = new_module(client, instructor, new_course(client, instructor)["id"])["id"]
    lid = new_lesson(client, instructor, mid)["id"]
    body = error(client.put(f"{API}/lessons/update-lessons/{lid}", json={"module_id": 999999},
                            headers=instructor.headers), 422)
    assert "module_id" in body["details"]
    assert lesson_order(app, mid) == [(lid, 0)]


def test_deleting_a_lesson_renumbers_the_rest(app, client, instructor):
    cid = new_course(client, instructor)["id"]
    mid = new_module(client, instructor, cid)["id"]
    a, b, c = (new_lesson(client, instructor, mid, t)["id"] for t in "ABC")
    assert ok(client.delete(f"{API}/lessons/delete-lessons/{a}", headers=instructor.headers))
    assert assert_gap_free(lesson_order(app, mid)) == [b, c]
    with app.app_context():
        assert db.session.get(Lesson, a) is None
    ok(client.delete(f"{API}/lessons/{c}", headers=instructor.headers))
    assert assert_gap_free(lesson_order(app, mid)) == [b]
    error(client.delete(f"{API}/lessons/delete-lessons/{a}", headers=instructor.headers), 404)


def test_reordering_lessons(app, client, instructor):
    cid = new_course(client, instructor)["id"]
    m1 = new_module(client, instructor, cid)["id"]
    m2 = new_module(client, instructor, cid)["id"]
    a, b, c = (new_lesson(client, instructor, m1, t)["id"] for t in "ABC")
    elsewhere = new_lesson(client, instructor, m2)["id"]
    url = f"{API}/modules/{m1}/lessons/reorder"
    body = ok(client.put(url, json={"ids": [b, c, a]}, headers=instructor.headers))
    assert [(item["id"], item["position"]) for item in body["lessons"]] == [(b, 0), (c, 1), (a, 2)]
    assert assert_gap_free(lesson_order(app, m1)) == [b, c, a]
    for ids in ([b, c], [b, c, a, elsewhere], [b, b, c], []):
        error(client.put(url, json={"ids": ids}, headers=instructor.headers), 422)
    assert assert_gap_free(lesson_order(app, m1)) == [b, c, a]
    assert lesson_order(app, m2) == [(elsewhere, 0)]


def _content_writes(cid: int, mid: int, mid2: int, lid: int):
    """Every write on a course's content: (method, url, body)."""
    return [
        ("POST", f"/courses/{cid}/modules", {"title": "Intruder"}),
        ("POST", f"/modules/create-modules/{cid}", {"title": "Intruder"}),
        ("PUT", f"/modules/{mid}", {"title": "Intruder"}),
        ("PUT", f"/modules/update-modules/{mid}", {"position": 1}),
        ("DELETE", f"/modules/{mid2}", None),
        ("DELETE", f"/modules/delete-modules/{mid2}", None),
        ("PUT", f"/courses/{cid}/modules/reorder", {"ids": [mid2, mid]}),
        ("POST", f"/lessons/create-lessons/{mid}", {"title": "Intruder"}),
        ("PUT", f"/lessons/update-lessons/{lid}", {"title": "Intruder"}),
        ("PUT", f"/lessons/{lid}", {"module_id": mid2}),
        ("DELETE", f"/lessons/delete-lessons/{lid}", None),
        ("PUT", f"/modules/{mid}/lessons/reorder", {"ids": [lid]}),
    ]


@pytest.mark.parametrize("who", ["other_instructor", "student", "guest"])
def test_only_the_owner_writes_course_content(app, client, instructor, actor, who):
    cid = new_course(client, instructor)["id"]
    mid = new_module(client, instructor, cid, "Kept")["id"]
    mid2 = new_module(client, instructor, cid, "Empty")["id"]
    lid = new_lesson(client, instructor, mid, "Kept lesson")["id"]
    headers = {} if who == "guest" else actor("instructor" if who == "other_instructor"
                                             else "student").headers
    status, code = {"other_instructor": (403, "not_course_owner"),
                    "student": (403, "role_required"), "guest": (401, "token_missing")}[who]
    for method, url, body in _content_writes(cid, mid, mid2, lid):
        response = client.open(f"{API}{url}", method=method, json=body, headers=headers)
        assert response.status_code == status, (method, url, response.get_json())
        assert response.get_json()["code"] == code, (method, url)
    assert module_order(app, cid) == [(mid, 0), (mid2, 1)]
    assert lesson_order(app, mid) == [(lid, 0)]
    with app.app_context():
        assert db.session.get(Module, mid).title == "Kept"
        assert db.session.get(Lesson, lid).title == "Kept lesson"


def test_admin_writes_any_course_content(app, client, instructor, admin):
    cid = new_course(client, instructor)["id"]
    mid = new_module(client, admin, cid, "By admin")["id"]
    lid = new_lesson(client, admin, mid, "By admin")["id"]
    ok(client.put(f"{API}/lessons/{lid}", json={"title": "Edited"}, headers=admin.headers))
    with app.app_context():
        assert db.session.get(Module, mid).course_id == cid
        assert db.session.get(Lesson, lid).title == "Edited"


# --- prerequisites ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/courses/{id}/prerequisites",
                                  "/prerequisites/create-prerequisites/{id}"])
def test_adding_prerequisites(app, client, instructor, other_instructor, make_published, path):
    course = make_published(instructor, "Advanced")
    basics = make_published(instructor, "Basics")
    theory = make_published(other_instructor, "Theory")
    body = ok(client.post(f"{API}{path.format(id=course.course_id)}",
                          json={"prerequisite_course_ids": [theory.course_id, basics.course_id]},
                          headers=instructor.headers), 201)
    assert body["course_id"] == course.course_id
    assert [(p["id"], p["title"]) for p in body["prerequisites"]] == sorted(
        [(basics.course_id, "Basics"), (theory.course_id, "Theory")])
    # Adding is additive and idempotent.
    again = ok(client.post(f"{API}{path.format(id=course.course_id)}",
                           json={"prerequisite_course_ids": [basics.course_id]},
                           headers=instructor.headers), 201)
    assert len(again["prerequisites"]) == 2
    with app.app_context():
        assert set(db.session.scalars(select(CoursePrerequisite.prerequisite_course_id).where(
            CoursePrerequisite.course_id == course.course_id))) == {basics.course_id,
                                                                    theory.course_id}


def test_a_course_cannot_require_itself(app, client, instructor):
    course = new_course(client, instructor)
    for path in (f"/courses/{course['id']}/prerequisites",
                 f"/prerequisites/create-prerequisites/{course['id']}"):
        error(client.post(f"{API}{path}", json={"prerequisite_course_ids": [course["id"]]},
                          headers=instructor.headers), 422, "prerequisite_cycle")
    error(client.put(f"{API}/prerequisites/update-prerequisites/{course['id']}",
                     json={"prerequisite_course_ids": [course["id"]]},
                     headers=instructor.headers), 422, "prerequisite_cycle")
    assert count(app, CoursePrerequisite) == 0


def test_prerequisite_cycles_are_refused_and_named(app, client, instructor):
    a = new_course(client, instructor, "Alpha")["id"]
    b = new_course(client, instructor, "Bravo")["id"]
    c = new_course(client, instructor, "Charlie")["id"]
    for course, prerequisite in ((a, b), (b, c)):
        ok(client.post(f"{API}/prerequisites/create-prerequisites/{course}",
                       json={"prerequisite_course_ids": [prerequisite]},
                       headers=instructor.headers), 201)
    body = error(client.post(f"{API}/courses/{c}/prerequisites",
                             json={"prerequisite_course_ids": [a]}, headers=instructor.headers),
                 422, "prerequisite_cycle")
    for title in ("Alpha", "Bravo", "Charlie"):
        assert title in body["error"]
    assert body["details"]["cycle"] == [c, a, b, c]
    # Replacing the set is checked the same way.
    replaced = error(client.put(f"{API}/prerequisites/update-prerequisites/{c}",
                                json={"prerequisite_course_ids": [b]},
                                headers=instructor.headers), 422, "prerequisite_cycle")
    assert replaced["details"]["cycle"] == [c, b, c]
    with app.app_context():
        assert sorted(tuple(r) for r in db.session.execute(
            select(CoursePrerequisite.course_id, CoursePrerequisite.prerequisite_course_id))) == \
            sorted([(a, b), (b, c)])


def test_unknown_prerequisite_is_422(app, client, instructor):
    course = new_course(client, instructor)
    other = new_course(client, instructor, "Other")
    body = error(client.post(f"{API}/prerequisites/create-prerequisites/{course['id']}",
                             json={"prerequisite_course_ids": [other["id"], 999999]},
                             headers=instructor.headers), 422)
    assert "prerequisite_course_ids" in body["details"]
    error(client.post(f"{API}/prerequisites/create-prerequisites/{course['id']}",
                      json={"prerequisite_course_ids": ["many"]}, headers=instructor.headers), 422)
    error(client.post(f"{API}/prerequisites/create-prerequisites/999999",
                      json={"prerequisite_course_ids": [other["id"]]},
                      headers=instructor.headers), 404)
    assert count(app, CoursePrerequisite) == 0


def test_another_instructors_draft_cannot_be_a_prerequisite(app, client, instructor,
                                                            other_instructor, admin,
                                                            make_published):
    """Only a published course or one of the course's own instructor's; another instructor's
    draft answers as an unknown id does, so its existence stays private."""
    course = make_published(instructor, "Main").course_id
    own_draft = new_course(client, instructor, "My draft")["id"]
    secret = new_course(client, other_instructor, "Secret plans")["id"]
    for who in (instructor, admin):  # an admin is held to the course's instructor's rule
        for method, path in (("POST", f"/courses/{course}/prerequisites"),
                             ("PUT", f"/prerequisites/update-prerequisites/{course}")):
            body = error(client.open(f"{API}{path}", method=method, headers=who.headers,
                                     json={"prerequisite_course_ids": [own_draft, secret]}), 422)
            assert body["details"]["prerequisite_course_ids"] == f"unknown ids [{secret}]"
            assert "Secret" not in str(body)
    assert count(app, CoursePrerequisite) == 0
    ok(client.post(f"{API}/courses/{course}/prerequisites", headers=instructor.headers,
                   json={"prerequisite_course_ids": [own_draft]}), 201)
    with app.app_context():
        assert db.session.scalars(select(CoursePrerequisite.prerequisite_course_id)).all() == [
            own_draft]


def test_public_views_never_show_an_unpublished_prerequisite(app, client, instructor,
                                                             other_instructor, admin, student,
                                                             make_published):
    """A prerequisite that is not published (the instructor's own draft, or another's course
    unpublished after it was named) is hidden from everyone but its own instructor and admins:
    the prerequisite lists and the course detail, signed in or not."""
    course = make_published(instructor, "Main").course_id
    shown = make_published(other_instructor, "Shown").course_id
    later_hidden = make_published(other_instructor, "Withdrawn").course_id
    own_draft = new_course(client, instructor, "My draft")["id"]
    ok(client.post(f"{API}/courses/{course}/prerequisites", headers=instructor.headers,
                   json={"prerequisite_course_ids": [shown, later_hidden, own_draft]}), 201)
    ok(client.put(f"{API}/courses/{later_hidden}", json={"status": "draft"},
                  headers=other_instructor.headers))

    def seen(headers) -> dict[str, list[int]]:
        views = {}
        for path in (f"/courses/{course}/prerequisites",
                     f"/prerequisites/get-prerequisites/{course}"):
            views[path] = [p["id"] for p in ok(client.get(f"{API}{path}",
                                                          headers=headers))["prerequisites"]]
        for path in (f"/courses/{course}", f"/public/courses/{course}",
                     f"/public/get-courses/{course}"):
            views[path] = [p["id"] for p in ok(client.get(
                f"{API}{path}", headers=headers))["course"]["prerequisites"]]
        return views

    for headers in ({}, student.headers):
        assert set(map(tuple, seen(headers).values())) == {(shown,)}, headers
    assert set(map(tuple, seen(instructor.headers).values())) == {(shown, own_draft)}
    assert set(map(tuple, seen(other_instructor.headers).values())) == {(shown, later_hidden)}
    assert set(map(tuple, seen(admin.headers).values())) == {(shown, later_hidden, own_draft)}
    # The owner's own answers after a change leave the other instructor's draft out too.
    saved = ok(client.post(f"{API}/courses/{course}/prerequisites", headers=instructor.headers,
                           json={"prerequisite_course_ids": []}), 201)
    assert [p["id"] for p in saved["prerequisites"]] == [shown, own_draft]
    assert "Withdrawn" not in str(saved)
    assert count(app, CoursePrerequisite) == 3  # the link itself is kept


def test_reading_replacing_and_removing_prerequisites(app, client, instructor, make_published):
    course = make_published(instructor, "Main").course_id
    one, two, three = (make_published(instructor, t).course_id for t in ("One", "Two", "Three"))
    ok(client.post(f"{API}/courses/{course}/prerequisites",
                   json={"prerequisite_course_ids": [one, two]}, headers=instructor.headers), 201)

    for path in (f"/prerequisites/get-prerequisites/{course}", f"/courses/{course}/prerequisites"):
        listed = ok(client.get(f"{API}{path}"))  # no token
        assert [p["id"] for p in listed["prerequisites"]] == [one, two]
        assert listed["prerequisites"][0]["title"] == "One"

    replaced = ok(client.put(f"{API}/prerequisites/update-prerequisites/{course}",
                             json={"prerequisite_course_ids": [three, two]},
                             headers=instructor.headers))
    assert [p["id"] for p in replaced["prerequisites"]] == [two, three]
    with app.app_context():
        assert set(db.session.scalars(select(CoursePrerequisite.prerequisite_course_id).where(
            CoursePrerequisite.course_id == course))) == {two, three}

    assert ok(client.delete(f"{API}/prerequisites/delete-prerequisites/{course}/{two}",
                            headers=instructor.headers))
    assert [p["id"] for p in ok(client.get(
        f"{API}/prerequisites/get-prerequisites/{course}"))["prerequisites"]] == [three]
    error(client.delete(f"{API}/prerequisites/delete-prerequisites/{course}/{two}",
                        headers=instructor.headers), 404)
    error(client.delete(f"{API}/prerequisites/delete-prerequisites/{course}/{one}",
                        headers=instructor.headers), 404)
    assert count(app, CoursePrerequisite) == 1

    emptied = ok(client.put(f"{API}/prerequisites/update-prerequisites/{course}",
                            json={"prerequisite_course_ids": []}, headers=instructor.headers))
    assert emptied["prerequisites"] == []
    assert count(app, CoursePrerequisite) == 0


def test_only_the_owner_changes_prerequisites(app, client, instructor, other_instructor, student,
                                             make_published):
    course = make_published(instructor, "Main").course_id
    kept = make_published(instructor, "Kept").course_id
    extra = make_published(other_instructor, "Extra").course_id
    ok(client.post(f"{API}/courses/{course}/prerequisites",
                   json={"prerequisite_course_ids": [kept]}, headers=instructor.headers), 201)
    writes = [
        ("POST", f"/courses/{course}/prerequisites", {"prerequisite_course_ids": [extra]}),
        ("POST", f"/prerequisites/create-prerequisites/{course}",
         {"prerequisite_course_ids": [extra]}),
        ("PUT", f"/prerequisites/update-prerequisites/{course}", {"prerequisite_course_ids": []}),
        ("DELETE", f"/prerequisites/delete-prerequisites/{course}/{kept}", None),
    ]
    for headers, status in ((other_instructor.headers, 403), (student.headers, 403), ({}, 401)):
        for method, url, body in writes:
            response = client.open(f"{API}{url}", method=method, json=body, headers=headers)
            assert response.status_code == status, (method, url, response.get_json())
    with app.app_context():
        assert db.session.scalars(select(CoursePrerequisite.prerequisite_course_id)).all() == [kept]
    error(client.post(f"{API}/courses/{course}/prerequisites",
                      json={"prerequisite_course_ids": [extra]},
                      headers=other_instructor.headers), 403, "not_course_owner")


def test_an_archived_course_stays_open_to_its_students(client, instructor, student, actor,
                                                       make_published):
    ids = make_published(instructor, "Kept For Students")
    ok(client.post(f"{API}/enrollments", json={"course_id": ids.course_id},
                   headers=student.headers), 201)
    archived = ok(client.delete(f"{API}/courses/{ids.course_id}", headers=instructor.headers))
    assert archived["status"] == "archived"
    course = ok(client.get(f"{API}/courses/{ids.course_id}", headers=student.headers))["course"]
    assert course["status"] == "archived" and course["has_full_access"] is True
    lesson = ok(client.get(f"{API}/lessons/{ids.lesson_id}", headers=student.headers))["lesson"]
    assert lesson["id"] == ids.lesson_id
    # Nobody else sees it, and nobody new can enroll.
    stranger = actor("student")
    error(client.get(f"{API}/courses/{ids.course_id}", headers=stranger.headers), 404)
    error(client.get(f"{API}/courses/{ids.course_id}"), 404)
    error(client.post(f"{API}/enrollments", json={"course_id": ids.course_id},
                      headers=stranger.headers), 404)
