"""A catalog page reads its timestamps as the API's text and its JSON column as its text, in a
projection over the sorted, limited page (utils/pagination._page_read_as,
services/course_service._card_page_as_text): PostgreSQL formats the page's rows only, and the
rows come in the page's order. The answers must be the ones each course's own `to_dict`
gives, in every sort, across pages, with ties, with outcomes that repeat, are empty or hold
what JSON escapes."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from models import Course, Enrollment, User, db
from services import catalog_service, course_service
from tests.support.assertions import ok
from tests.support.queries import recorded_statements

API = "/api/v1"
SORTS = ("newest", "oldest", "price_asc", "price_desc", "title", "popular")
OUTCOMES = (["Read SQL", "Write SQL"], [], ['Quote "this"', "ünïcode ✓", "back\\slash"],
            ["Read SQL", "Write SQL"])


@pytest.fixture
def catalog(app, make_user):
    """Seven published courses: equal creation times, prices and titles to tie on, enrollments
    for the popular sort, outcomes that repeat; one draft the catalog never lists."""
    teacher, learner = make_user("instructor"), make_user("student")
    tie = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    with app.app_context():
        ids = []
        for n in range(7):
            course = Course(title=("Same title" if n % 2 else f"Course {n}"), slug=f"text-{n}",
                            instructor_id=teacher, status="published",
                            price=Decimal("10.00") * (n % 3),
                            learning_outcomes=OUTCOMES[n % len(OUTCOMES)],
                            created_at=tie if n < 4 else datetime(2026, 1, n, 9, 30, 15,
                                                                  tzinfo=timezone.utc),
                            published_at=tie)
            db.session.add(course)
            db.session.flush()
            ids.append(course.id)
            if n in (2, 5):
                db.session.add(Enrollment(user_id=learner, course_id=course.id,
                                          status="active"))
        db.session.add(Course(title="Draft", slug="text-draft", instructor_id=teacher,
                              status="draft", price=0))
        db.session.commit()
    return ids


def _expected(app, sort: str) -> list[dict]:
    """The catalog in `sort`'s order, each course as its ORM entity answers."""
    with app.app_context():
        query = catalog_service.course_query(sort=sort)
        courses = db.session.scalars(query).all()
        return [course_service.course_summary(course) for course in courses]


@pytest.mark.parametrize("sort", SORTS)
def test_every_sort_and_page_answers_what_the_entities_do(app, client, catalog, sort):
    expected = _expected(app, sort)
    assert len(expected) == 7
    seen = []
    for page in (1, 2, 3):
        with recorded_statements(app) as statements:
            body = ok(client.get(f"{API}/public/get-courses?sort={sort}&per_page=3&page={page}"))
        assert len(statements) <= 2  # the page with its count; a count kept: the page alone
        seen += body["courses"]
        assert body["pagination"]["total"] == 7
    assert seen == expected
    assert [course["id"] for course in seen] == [course["id"] for course in expected]


def test_timestamps_are_text_and_outcomes_decoded_once_per_text(app, catalog):
    with app.test_request_context("/"):
        first = course_service.catalog_page(catalog_service.catalog_shape(sort="oldest"), 1, 20)
        courses = {course["id"]: course for course in first["courses"]}
        for course_id in catalog:
            own = db.session.get(Course, course_id)
            assert courses[course_id]["created_at"] == own.to_dict()["created_at"]
            assert courses[course_id]["learning_outcomes"] == own.learning_outcomes
        assert courses[catalog[1]]["learning_outcomes"] == []
        # An answer's list is its own: changing one leaves the next page's as stored.
        courses[catalog[0]]["learning_outcomes"].append("changed")
        again = course_service.catalog_page(catalog_service.catalog_shape(sort="oldest"), 1, 20)
        assert {course["id"]: course for course in again["courses"]}[catalog[0]][
            "learning_outcomes"] == ["Read SQL", "Write SQL"]
        assert courses[catalog[3]]["learning_outcomes"] == ["Read SQL", "Write SQL"]
        # ...and so is a card's: two cards of one stored text hold two lists.
        shape = catalog_service.catalog_shape(sort="oldest")
        rows, _meta = course_service._list_statement(shape.build, shape.shape, False).page(
            shape.values, 1, 20)
        cards = {card.id: card for card in (course_service.card_of_row(row, json_text=True)
                                            for row in rows)}
        cards[catalog[0]].learning_outcomes.append("changed")
        assert cards[catalog[3]].learning_outcomes == ["Read SQL", "Write SQL"]


def test_postgresql_formats_the_page_rows_only():
    """The text is written in the projection over the page, not inside it, where the sort
    would have PostgreSQL write every match's before the LIMIT."""
    guest = catalog_service.catalog_shape(difficulty="beginner")
    page = course_service._list_statement(guest.build, guest.shape, False)
    for key, statement in page.statements.items():
        sql = str(statement.compile(dialect=postgresql.dialect()))
        inner_start = sql.index("FROM (")
        outer, inner = sql[:inner_start], sql[inner_start:]
        assert outer.count("to_char(") == 4, key  # published, review asked, created, updated
        assert "to_char(" not in inner and "LIMIT" in inner, key
        assert "CAST(page.learning_outcomes AS TEXT)" in outer, key


def test_a_draft_and_another_instructors_filter_are_still_applied(app, client, catalog):
    with app.app_context():
        teacher = db.session.scalar(select(User.id).where(User.role == "instructor"))
    body = ok(client.get(f"{API}/public/get-courses?instructor_id={teacher}&per_page=50"))
    assert sorted(course["id"] for course in body["courses"]) == sorted(catalog)
    assert all(course["status"] == "published" for course in body["courses"])
