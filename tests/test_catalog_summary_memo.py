"""A catalog page's summaries are kept, written as JSON, by their rows' versions on
PostgreSQL and by their row's values elsewhere (services/course_service `_KEPT`), and a long
list's estimate is asked on the page's own connection, without an ORM session
(utils/pagination `_estimate`).

The memo is a pure function of the rows: a course whose rows did not change is summarised once
a process, a change to any column the summary reads (the course's, its instructor's, its
subcategory's) is a new key, and each answer is the caller's own to change (its summaries are
made from their JSON when read, not kept)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import TypeAdapter
from flask import g
from sqlalchemy import event, text

from models import Course, MasterCategory, Subcategory, db
from services import catalog_service, course_service
from tests.support.queries import recorded_statements, sent_queries
from utils import pagination
from utils.responses import CourseListResponse
from utils.pipeline.fast_reads import ReadSession


@pytest.fixture
def catalog(app, make_user):
    """Three published courses of one instructor, two in a subcategory, with outcomes."""
    teacher = make_user("instructor")
    with app.app_context():
        master = MasterCategory(name="Memo master", slug="memo-master")
        db.session.add(master)
        db.session.flush()
        subcategory = Subcategory(name="Memo sub", slug="memo-sub", master_category_id=master.id)
        db.session.add(subcategory)
        db.session.flush()
        ids = []
        for n in range(3):
            course = Course(title=f"Memo {n}", slug=f"memo-{n}", instructor_id=teacher,
                            status="published", price=Decimal("12.50") * n,
                            subcategory_id=subcategory.id if n else None,
                            learning_outcomes=[f"Outcome {n}", "Shared"])
            db.session.add(course)
            db.session.flush()
            ids.append(course.id)
        db.session.commit()
    return teacher, ids


def _page(app) -> dict:
    with app.test_request_context("/"):
        return course_service.catalog_page(catalog_service.catalog_shape(sort="oldest"), 1, 20)


def _forget() -> None:
    course_service._KEPT.clear()
    course_service._KEPT_COUNTS.update(hits=0, misses=0)


def _info() -> tuple[int, int, int]:
    """(summaries kept, hits, misses) since `_forget`."""
    counts = course_service._KEPT_COUNTS
    return len(course_service._KEPT), counts["hits"], counts["misses"]


def _expected(app) -> list[dict]:
    with app.app_context():
        courses = db.session.scalars(catalog_service.course_query(sort="oldest")).all()
        return [course_service.course_summary(course) for course in courses]


def test_a_row_seen_before_is_summarised_once_and_answers_what_the_entity_does(app, catalog):
    _forget()
    first = _page(app)
    assert first["courses"] == _expected(app)
    # What the answer joins: each summary as the list's body model writes it.
    writer = TypeAdapter(CourseListResponse)
    assert first["courses"].json() == writer.dump_json(
        {"courses": _expected(app), "pagination": first["pagination"]}).split(
        b'"courses":', 1)[1].rsplit(b',"pagination"', 1)[0]
    seen = len(first["courses"])
    assert _info() == (seen, 0, seen)
    second = _page(app)
    assert second == first
    assert _info() == (seen, seen, seen)  # not one summary made again
    assert course_service._KEPT_SIZE == 512


def test_each_answer_is_the_caller_s_own(app, catalog):
    _teacher, ids = catalog
    first = {course["id"]: course for course in _page(app)["courses"]}
    mine = first[ids[1]]
    mine["title"] = "Changed"
    mine["learning_outcomes"].append("Changed")
    mine["instructor"]["first_name"] = "Changed"
    mine["subcategory"]["name"] = "Changed"
    again = {course["id"]: course for course in _page(app)["courses"]}
    assert again[ids[1]] == {course["id"]: course for course in _expected(app)}[ids[1]]
    assert again[ids[1]]["learning_outcomes"] == ["Outcome 1", "Shared"]
    assert again[ids[1]]["instructor"]["first_name"] != "Changed"
    assert again[ids[1]]["subcategory"]["name"] == "Memo sub"
    assert again[ids[0]]["subcategory"] is None
    assert again[ids[1]]["title"] == "Memo 1"
    # Two answers of one kept summary are two objects, down to their lists.
    third = {course["id"]: course for course in _page(app)["courses"]}
    assert third[ids[1]] is not again[ids[1]]
    assert third[ids[1]]["learning_outcomes"] is not again[ids[1]]["learning_outcomes"]
    assert third[ids[1]]["instructor"] is not again[ids[1]]["instructor"]


def test_any_change_to_what_the_row_reads_is_answered_at_once(app, catalog):
    """Written in SQL, around the ORM and its version bump: the memo needs neither, as the
    changed row is another key."""
    teacher, ids = catalog
    _page(app)
    with app.app_context():
        db.session.execute(text("UPDATE users SET first_name = 'Renamed' WHERE id = :id"),
                           {"id": teacher})
        db.session.execute(text("UPDATE courses SET price = 99.99, learning_outcomes = "
                                "'[\"New\"]' WHERE id = :id"), {"id": ids[0]})
        db.session.execute(text("UPDATE subcategories SET name = 'Renamed sub'"))
        db.session.commit()
    answers = {course["id"]: course for course in _page(app)["courses"]}
    assert all(answers[i]["instructor"]["first_name"] == "Renamed" for i in ids)
    assert answers[ids[0]]["price"] == 99.99 and answers[ids[0]]["is_free"] is False
    assert answers[ids[0]]["learning_outcomes"] == ["New"]
    assert answers[ids[2]]["subcategory"]["name"] == "Renamed sub"
    assert [answers[i] for i in ids] == _expected(app)


def test_a_long_list_s_estimate_needs_no_orm_session(app, catalog, monkeypatch):
    """As the fast paths read (fast_reads.run_reader: a ReadSession over one connection),
    a list past EXACT_COUNT_LIMIT: its estimate (PostgreSQL) or exact count (SQLite) is asked
    on the page's own connection, and the session never makes a real ORM session."""
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 2)
    shape = catalog_service.catalog_shape(sort="newest")
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    for attempt in range(2):
        with app.test_request_context("/"), recorded_statements(app) as statements:
            g.read_only_view = True
            session = ReadSession(db.session.session_factory, db.engine)
            db.session.registry.set(session)
            try:
                answer = course_service.catalog_page(shape, 1, 2)
                assert session._session is None  # no ORM session was made
            finally:
                db.session.remove()
        meta = answer["pagination"]
        assert len(answer["courses"]) == 2 and meta["has_next"] is True
        if postgres:
            assert meta["total_is_estimate"] is True and meta["total"] >= 3
        else:
            assert meta["total"] == 3 and "total_is_estimate" not in meta
        explained = [s for s in statements if s.startswith("EXPLAIN")]
        # PostgreSQL: the plan asked once, then kept; the page's statement alone after it.
        assert len(explained) == (postgres and attempt == 0), statements


def test_a_row_of_long_text_is_summarised_each_time_not_kept(app, catalog):
    """The memo's weight is bounded: a row with more unbounded text (description, outcomes,
    the instructor's bio) than _KEPT_TEXT is answered as well, but never kept."""
    _teacher, ids = catalog
    long = "x" * (course_service._KEPT_TEXT + 1)
    with app.app_context():
        db.session.get(Course, ids[2]).description = long
        db.session.commit()
    _forget()
    for _ in range(2):
        answers = {course["id"]: course for course in _page(app)["courses"]}
        assert answers[ids[2]]["description"] == long
        assert [answers[i] for i in ids] == _expected(app)
    # The two short rows kept once and found the second time; the long one never kept (looked
    # for, and missed, each time).
    assert _info() == (len(ids) - 1, len(ids) - 1, len(ids) + 1)


def test_long_outcomes_are_decoded_each_time_not_kept(app, catalog):
    """The outcomes' decoded texts are kept too (`_decoded`), bounded the same way: 50
    outcomes of 300 characters (the most a course takes) are answered but never kept."""
    _teacher, ids = catalog
    longest = [f"{n:02d}" + "é" * 298 for n in range(50)]
    with app.app_context():
        db.session.get(Course, ids[0]).learning_outcomes = longest
        db.session.commit()
    course_service._decoded.cache_clear()
    _forget()
    answers = {course["id"]: course for course in _page(app)["courses"]}
    assert answers[ids[0]]["learning_outcomes"] == longest
    assert [answers[i] for i in ids] == _expected(app)
    kept = course_service._decoded.cache_info()
    assert kept.currsize == len(ids) - 1  # the two short texts; not the long one


def _on_postgresql(app) -> None:
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("row versions (xmin) are PostgreSQL's; elsewhere the row's values are the key")


def test_on_postgresql_a_page_seen_before_reads_versions_not_cards(app, catalog):
    _on_postgresql(app)
    _forget()
    with sent_queries(app) as sent:
        first = _page(app)
    # The page's ids and row versions, then the cards of the courses no summary was kept for.
    assert len(sent) == 2, sent
    assert "xmin" in sent[0] and "description" not in sent[0] and "ANY" not in sent[0]
    assert "description" in sent[1] and "ANY" in sent[1]
    with sent_queries(app) as sent:
        again = _page(app)
    assert len(sent) == 1 and "description" not in sent[0], sent
    assert again == first and again["courses"] == _expected(app)


def test_on_postgresql_only_what_changed_is_read_again(app, catalog):
    """A write in SQL, around the ORM: the course's new row version is a new key, and its card
    alone is read; a change to the instructor's row, each of their courses."""
    _on_postgresql(app)
    teacher, ids = catalog
    _page(app)
    with app.app_context():
        db.session.execute(text("UPDATE courses SET title = 'Retitled' WHERE id = :id"),
                           {"id": ids[1]})
        db.session.commit()
    with sent_queries(app) as sent:
        answers = {course["id"]: course for course in _page(app)["courses"]}
    assert len(sent) == 2 and f"ARRAY[{ids[1]}]" in sent[1], sent
    assert answers[ids[1]]["title"] == "Retitled"
    assert [answers[i] for i in ids] == _expected(app)
    with app.app_context():
        db.session.execute(text("UPDATE users SET headline = 'Changed' WHERE id = :id"),
                           {"id": teacher})
        db.session.commit()
    with sent_queries(app) as sent:
        answers = {course["id"]: course for course in _page(app)["courses"]}
    assert len(sent) == 2 and all(str(i) in sent[1].split("ARRAY[")[1] for i in ids), sent
    assert all(answers[i]["instructor"]["headline"] == "Changed" for i in ids)
    assert [answers[i] for i in ids] == _expected(app)


def test_on_postgresql_a_course_gone_between_the_two_statements_is_not_answered(app, catalog):
    """Deleted after the page read its id, before its card was read: the page is read again
    as one statement of cards, counted anew."""
    _on_postgresql(app)
    _forget()
    _teacher, ids = catalog
    with app.app_context():
        engine = db.engine

    def delete_first(conn, cursor, statement, parameters, context, executemany):
        if "ANY" in statement:
            with engine.connect() as other:
                other.execute(text("DELETE FROM courses WHERE id = :id"), {"id": ids[0]})
                other.commit()

    event.listen(engine, "before_cursor_execute", delete_first)
    try:
        answer = _page(app)
    finally:
        event.remove(engine, "before_cursor_execute", delete_first)
    assert [course["id"] for course in answer["courses"]] == ids[1:]
    assert answer["pagination"]["total"] == 2
    assert answer["courses"] == _expected(app)
