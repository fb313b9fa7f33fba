"""A course's page reads its card and its outline in one statement
(services/course_service._with_outline): the card's row first, then the outline's rows in the
outline's order, each with NULLs where the other's columns are. Its answer must be the one the two statements gave (the instructor's own
detail still reads them apart), for a course without modules, a module without lessons, a
lesson without resources, and each reader's completion."""
from __future__ import annotations

from models import Course, LessonResource, db
from services import course_service
from tests.support.assertions import ok
from tests.support.queries import recorded_statements
from tests.support.learning import (  # noqa: F401 (actor, instructor, student: fixtures)
    API,
    actor,
    add_lesson,
    build_course,
    complete,
    enroll,
    instructor,
    student,
)


def _resource(app, owner, lesson_id: int, title: str, position: int) -> None:
    with app.app_context():
        db.session.add(LessonResource(
            lesson_id=lesson_id, title=title, original_filename=f"{title}.pdf",
            stored_path=f"resources/{lesson_id}-{title}.pdf", mime_type="application/pdf",
            file_type="pdf", file_size=10, position=position, uploaded_by_id=owner.id))
        db.session.commit()


def _module(client, owner, course_id: int, title: str) -> int:
    return ok(client.post(f"{API}/courses/{course_id}/modules", json={"title": title},
                          headers=owner.headers), 201)["module"]["id"]


def test_the_page_is_what_the_two_statements_gave(app, client, instructor, student, actor):  # noqa: F811
    built = build_course(client, instructor, "Shapes", modules=(("A1", "A2"), ("B1",)))
    _resource(app, instructor, built.lesson_ids[0], "slides", 2)
    _resource(app, instructor, built.lesson_ids[0], "notes", 1)
    empty = _module(client, instructor, built.id, "Empty module")  # no lessons
    later = add_lesson(client, instructor, built.module_ids[0], "A3", is_preview=True)
    eid = enroll(client, student, built.id)["id"]
    complete(client, student, eid, built.lesson_ids[1])
    outcomes = ["Read SQL", 'Quote "this"', "ünïcode ✓", ""]
    with app.app_context():  # a JSON column: read as its text beside the outline, decoded once
        db.session.get(Course, built.id).learning_outcomes = outcomes
        db.session.commit()

    apart = ok(client.get(f"{API}/courses/get-courses/{built.id}",
                          headers=instructor.headers))["course"]
    with recorded_statements(app) as statements:
        together = ok(client.get(f"{API}/courses/{built.id}",
                                 headers=instructor.headers))["course"]
    assert len(statements) == 1, "\n".join(statements)  # no prerequisites: the card's row says
    assert together == apart
    assert together["learning_outcomes"] == outcomes
    titles = [[lesson["title"] for lesson in module["lessons"]] for module in together["modules"]]
    assert titles == [["A1", "A2", "A3"], ["B1"], []]
    assert together["modules"][2]["id"] == empty
    assert [r["title"] for r in together["modules"][0]["lessons"][0]["resources"]] == \
        ["notes", "slides"]
    assert together["lesson_count"] == 4

    mine = ok(client.get(f"{API}/courses/{built.id}", headers=student.headers))["course"]
    assert mine["access"] == "enrolled"
    assert [lesson["completed"] for m in mine["modules"] for lesson in m["lessons"]] == \
        [False, True, False, False]
    stranger = actor()
    theirs = ok(client.get(f"{API}/courses/{built.id}", headers=stranger.headers))["course"]
    guest = ok(client.get(f"{API}/public/courses/{built.id}"))["course"]
    assert guest["learning_outcomes"] == mine["learning_outcomes"] == outcomes
    for seen in (theirs, guest):
        assert seen["access"] == "guest"
        assert [lesson["completed"] for m in seen["modules"] for lesson in m["lessons"]] == \
            [None] * 4
        previewed = [lesson["id"] for m in seen["modules"] for lesson in m["lessons"]
                     if lesson["resources"]]
        assert previewed == []  # A1's resources are not a guest's; A3 has none
    assert [lesson["id"] for m in guest["modules"] for lesson in m["lessons"]] == \
        [*built.lesson_ids[:2], later, built.lesson_ids[2]]


def test_a_course_without_modules_is_its_card_alone(app, client, instructor, student):  # noqa: F811
    built = build_course(client, instructor, "Bare", modules=(), publish=False)
    for headers in (instructor.headers, None):
        path = f"{API}/courses/{built.id}"
        if headers is None:  # a draft is 404 to anyone else
            assert client.get(path, headers=student.headers).status_code == 404
            continue
        course = ok(client.get(path, headers=headers))["course"]
        assert course["modules"] == [] and course["lesson_count"] == 0
        assert course["title"] == "Bare"
    assert client.get(f"{API}/courses/{2**31 - 1}", headers=student.headers).status_code == 404


def test_the_card_is_read_on_its_own_row_and_the_outline_keeps_its_types(
        app, client, instructor, student):  # noqa: F811
    """The card's columns come once, on the first row; each outline row holds NULLs there.
    A UNION's result is read by its first SELECT's types: the outline's booleans and
    integers must still be booleans and integers on SQLite, where the driver gives 0 and 1
    (JSON `1` would equal `true` in a Python comparison of the two answers)."""
    built = build_course(client, instructor, "Typed", modules=(("T1", "T2"),))
    preview = add_lesson(client, instructor, built.module_ids[0], "T3", is_preview=True)
    eid = enroll(client, student, built.id)["id"]
    complete(client, student, eid, built.lesson_ids[0])
    with app.app_context():
        rows = db.session.connection().execute(
            course_service._WITH_OUTLINE[True],
            {"course_id": built.id, "reader_id": student.id, "student_id": student.id}).all()
    card_width = course_service.N_CARD + 2  # has_prerequisites, enrolled
    assert len(rows) == 4  # the card, then three lessons
    assert rows[0][0] == built.id and rows[0][card_width] == 0
    assert all(value is None for value in rows[0][card_width + 1:])
    for row in rows[1:]:
        assert all(value is None for value in row[:card_width]) and row[card_width] == 1
    for headers in (student.headers, None):
        course = ok(client.get(f"{API}/courses/{built.id}", headers=headers)
                    if headers else client.get(f"{API}/public/courses/{built.id}"))["course"]
        lessons = course["modules"][0]["lessons"]
        assert [lesson["id"] for lesson in lessons] == [*built.lesson_ids, preview]
        assert [lesson["is_preview"] for lesson in lessons] == [False, False, True]
        assert all(type(lesson["is_preview"]) is bool and type(lesson["position"]) is int
                   for lesson in lessons)
        assert course["is_free"] in (True, False) and type(course["is_free"]) is bool
        completed = [lesson["completed"] for lesson in lessons]
        assert completed == ([True, False, False] if headers else [None] * 3)
        assert all(value is None or type(value) is bool for value in completed)
