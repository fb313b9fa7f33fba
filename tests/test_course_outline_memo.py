"""A course's outline is kept by course and catalog version (services/course_service
`_kept_outline`): a page read under a version seen before reads the card and the reader's
completions alone, and must answer exactly what a full read answers, to every reader.

- A learner's completions are read fresh on every page: completing a lesson writes no catalog
  table and moves no version, and the next page shows it.
- Every outline write through the app moves the version: the next page shows it.
- A write made around the app (psql) moves nothing: it shows once the version moves or after
  OUTLINE_SECONDS.
- Without a usable version (none in Redis, one that is not a number), nothing is kept.
- An outline with more text than KEPT_OUTLINE_TEXT is read each time, never kept.
- The signed-in fast path reads the version in its one round trip, as Flask's path does."""
from __future__ import annotations

import pytest
from limits.storage import RedisStorage
from sqlalchemy import text

from models import Lesson, db
from services import course_service
from tests.conftest import redis_url, require_service
from tests.support.assertions import ok
from tests.support.fast_apps import redis_app
from tests.support.queries import recorded_statements
from tests.test_catalog_fast_path import RoundTrips, flask_handled
from tests.support.learning import (  # noqa: F401 (actor, instructor, student: fixtures)
    API,
    actor,
    actor_in,
    add_lesson,
    build_course,
    complete,
    enroll,
    instructor,
    student,
)
from utils.extensions import limiter
from utils.pipeline import catalog_cache, redis_client


@pytest.fixture(autouse=True)
def kept_outlines(app):
    """Redis holds the catalog version (every CI pass has it), and no outline is kept from
    another test."""
    require_service("Redis (TEST_REDIS_URL)", redis_url())
    course_service._outlines.clear()
    yield course_service._outlines
    course_service._outlines.clear()


def _page(client, course_id: int, headers=None) -> dict:
    if headers is None:
        return ok(client.get(f"{API}/public/courses/{course_id}"))["course"]
    return ok(client.get(f"{API}/courses/{course_id}", headers=headers))["course"]


def _read_outline(statements: list[str]) -> bool:
    """Whether the statements read the outline's tables (a kept outline: they do not)."""
    return any("modules" in statement for statement in statements)


def _version(app) -> bytes | None:
    with app.app_context():
        return redis_client.get().get(catalog_cache.VERSION_KEY)


def _titles(course: dict) -> list[list[str]]:
    return [[lesson["title"] for lesson in module["lessons"]] for module in course["modules"]]


def test_a_kept_outline_is_read_with_the_learner_s_completions_fresh(
        app, client, instructor, student, kept_outlines):  # noqa: F811
    built = build_course(client, instructor, "Kept", modules=(("K1", "K2"), ("K3",)))
    eid = enroll(client, student, built.id)["id"]
    with recorded_statements(app) as first_statements:
        first = _page(client, built.id, student.headers)
    assert _read_outline(first_statements) and len(first_statements) == 1
    assert len(kept_outlines) == 1
    version = _version(app)

    with recorded_statements(app) as statements:
        again = _page(client, built.id, student.headers)
    assert len(statements) == 1 and not _read_outline(statements), statements
    assert again == first
    assert [lesson["completed"] for m in again["modules"] for lesson in m["lessons"]] == \
        [False, False, False]

    complete(client, student, eid, built.lesson_ids[1])  # no catalog table: same version
    assert _version(app) == version
    with recorded_statements(app) as statements:
        done = _page(client, built.id, student.headers)
    assert not _read_outline(statements)
    assert [lesson["completed"] for m in done["modules"] for lesson in m["lessons"]] == \
        [False, True, False]
    assert _titles(done) == [["K1", "K2"], ["K3"]] and done["lesson_count"] == 3
    kept_outlines.clear()  # the same page read in full
    assert _page(client, built.id, student.headers) == done


def test_every_reader_gets_from_a_kept_outline_what_a_full_read_gives(
        app, client, instructor, student, actor):  # noqa: F811
    built = build_course(client, instructor, "Readers", modules=(("R1", "R2"),))
    preview = add_lesson(client, instructor, built.module_ids[0], "R3", is_preview=True)
    eid = enroll(client, student, built.id)["id"]
    complete(client, student, eid, built.lesson_ids[0])
    readers = {"guest": None, "stranger": actor().headers, "student": student.headers,
               "owner": instructor.headers, "admin": actor("admin").headers}
    full = {}
    for name, headers in readers.items():
        course_service._outlines.clear()
        full[name] = _page(client, built.id, headers)
    for name, headers in readers.items():
        _page(client, built.id, headers)  # kept, whoever read it first
        with recorded_statements(app) as statements:
            kept = _page(client, built.id, headers)
        assert not _read_outline(statements), (name, statements)
        assert kept == full[name], name
    assert full["guest"]["access"] == full["stranger"]["access"] == "guest"
    assert full["student"]["access"] == "enrolled"
    lessons = {name: [lesson for m in course["modules"] for lesson in m["lessons"]]
               for name, course in full.items()}
    for name in ("guest", "stranger"):  # a body only for the preview, nobody's completions
        assert [lesson["content"] is not None for lesson in lessons[name]] == \
            [False, False, True]
        assert {lesson["completed"] for lesson in lessons[name]} == {None}
    assert [lesson["completed"] for lesson in lessons["student"]] == [True, False, False]
    assert all(lesson["content"] for lesson in lessons["student"])
    assert {lesson["completed"] for lesson in lessons["owner"] + lessons["admin"]} == {None}
    assert lessons["guest"][2]["id"] == preview


def test_an_answer_cannot_change_the_kept_outline(app, client, instructor, student):  # noqa: F811
    built = build_course(client, instructor, "Shared", modules=(("S1",),))
    enroll(client, student, built.id)
    first = _page(client, built.id, student.headers)
    (modules,) = [kept for _, kept in course_service._outlines.values()]
    # The kept objects themselves are tuples, not lists; each answer is built anew from them.
    assert isinstance(modules, tuple) and isinstance(modules[0].lessons, tuple)
    assert isinstance(modules[0].lessons[0].resources, tuple)
    answered = course_service.outline(modules, "enrolled")
    answered[0]["lessons"][0]["title"] = "Changed"
    answered[0]["lessons"].append({"title": "Added"})
    assert _page(client, built.id, student.headers) == first


def test_an_outline_write_through_the_app_shows_at_once(app, client, instructor, student):  # noqa: F811
    built = build_course(client, instructor, "Written", modules=(("W1", "W2"),))
    enroll(client, student, built.id)
    _page(client, built.id, student.headers)
    _page(client, built.id)
    version = _version(app)
    added = add_lesson(client, instructor, built.module_ids[0], "W3")
    assert _version(app) != version
    assert _titles(_page(client, built.id, student.headers)) == [["W1", "W2", "W3"]]
    ok(client.put(f"{API}/lessons/{added}", json={"title": "W3 renamed"},
                  headers=instructor.headers))
    assert _titles(_page(client, built.id)) == [["W1", "W2", "W3 renamed"]]
    ok(client.delete(f"{API}/lessons/{built.lesson_ids[0]}", headers=instructor.headers))
    for headers in (student.headers, None):
        assert _titles(_page(client, built.id, headers)) == [["W2", "W3 renamed"]]


def test_a_write_around_the_app_shows_when_the_version_moves_or_the_time_is_up(
        app, client, instructor, student, monkeypatch):  # noqa: F811
    built = build_course(client, instructor, "Around", modules=(("A1",),))
    enroll(client, student, built.id)
    _page(client, built.id, student.headers)
    with app.app_context():
        db.session.execute(text("UPDATE lessons SET title = 'A1 by hand' WHERE id = :id"),
                           {"id": built.lesson_ids[0]})
        db.session.commit()  # Core SQL: no catalog write the app noticed
    assert _titles(_page(client, built.id, student.headers)) == [["A1"]]  # kept, documented
    monkeypatch.setattr(course_service, "OUTLINE_SECONDS", 0)
    assert _titles(_page(client, built.id, student.headers)) == [["A1 by hand"]]
    monkeypatch.undo()
    with app.app_context():
        db.session.execute(text("UPDATE lessons SET title = 'A1 again' WHERE id = :id"),
                           {"id": built.lesson_ids[0]})
        db.session.commit()
        catalog_cache.bump()  # what any catalog write through the app does
    assert _titles(_page(client, built.id, student.headers)) == [["A1 again"]]


@pytest.mark.parametrize("stored", [None, b"garbage"])
def test_without_a_usable_version_nothing_is_kept(app, client, instructor, student,
                                                  kept_outlines, stored):  # noqa: F811
    built = build_course(client, instructor, "Unversioned", modules=(("U1",),))
    enroll(client, student, built.id)
    expected = _page(client, built.id, student.headers)
    kept_outlines.clear()
    with app.app_context():
        store = redis_client.get()
    if stored is None:
        store.delete(catalog_cache.VERSION_KEY)
    else:
        store.set(catalog_cache.VERSION_KEY, stored)
    for headers in (student.headers, None, student.headers):
        with recorded_statements(app) as statements:
            page = _page(client, built.id, headers)
        assert _read_outline(statements), statements
        assert page["id"] == built.id and _titles(page) == [["U1"]]
    assert kept_outlines == {}
    assert _page(client, built.id, student.headers) == expected


def test_a_long_outline_is_read_each_time(app, client, instructor, student, kept_outlines):  # noqa: F811
    built = build_course(client, instructor, "Long", modules=(("Short",),))
    long = add_lesson(client, instructor, built.module_ids[0], "Long",
                      content="x" * (course_service.KEPT_OUTLINE_TEXT + 1))
    enroll(client, student, built.id)
    for _ in range(2):
        with recorded_statements(app) as statements:
            page = _page(client, built.id, student.headers)
        assert _read_outline(statements)
        assert page["modules"][0]["lessons"][1]["id"] == long
        assert len(page["modules"][0]["lessons"][1]["content"]) == \
            course_service.KEPT_OUTLINE_TEXT + 1
    assert kept_outlines == {}
    with app.app_context():
        db.session.get(Lesson, long).content = "short again"
        db.session.commit()
    _page(client, built.id, student.headers)
    assert len(kept_outlines) == 1


def test_the_signed_in_fast_path_reads_the_version_in_its_one_round_trip(
        app, kept_outlines, monkeypatch):
    with redis_app(app, RATELIMIT_DEFAULT="100 per minute") as fast:
        redis_client.for_url(fast.config["REDIS_URL"]).script_load(
            RedisStorage.SCRIPT_INCR_EXPIRE)
        client = fast.test_client()
        teacher, learner = actor_in(fast, "instructor", 1), actor_in(fast, "student", 1)
        limiter.enabled = False
        try:
            built = build_course(client, teacher, "Fast kept", modules=(("F1", "F2"),))
            eid = enroll(client, learner, built.id)["id"]
        finally:
            limiter.enabled = True
        path = f"{API}/courses/{built.id}"
        learned = ok(client.get(path, headers=learner.headers))  # Flask answers and keeps
        assert len(kept_outlines) == 1
        trips = RoundTrips(monkeypatch)
        with recorded_statements(fast) as statements, flask_handled(fast) as handled:
            answered = client.get(path, headers=learner.headers)
        monkeypatch.undo()
        assert handled == [] and trips.count == 1
        assert len(statements) == 1 and not _read_outline(statements), statements
        assert answered.get_json() == learned
        limiter.enabled = False
        try:
            complete(client, learner, eid, built.lesson_ids[1])
        finally:
            limiter.enabled = True
        with flask_handled(fast) as handled:
            done = ok(client.get(path, headers=learner.headers))["course"]
        assert handled == []
        assert [lesson["completed"] for lesson in done["modules"][0]["lessons"]] == \
            [False, True]
