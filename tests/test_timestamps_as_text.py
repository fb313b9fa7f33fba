"""Hot reads select their timestamps as the API's text (models.iso_text: PostgreSQL's to_char in
UTC; SQLite's stored value formatted here), and the models' `to_dict` passes it through: the
answer must be what the entity's `to_dict` writes from the datetime, to the second, at the ends
of the range and with fractions of a second."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from models import Course, Lesson, Module, as_text, db, iso_text
from tests.support.assertions import ok
from tests.support.queries import recorded_statements
from utils.helpers import iso

API = "/api/v1"
UTC = timezone.utc
MOMENTS = (
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, 15, 500000, tzinfo=UTC),
    # An offset other than UTC's, stored as its UTC instant.
    datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
)


def _course_at(app, teacher_id: int, moments) -> int:
    """A published course whose four timestamps, and its module's and lesson's, are `moments`."""
    created, updated, published, review = moments
    with app.app_context():
        course = Course(title="Times", slug="times", instructor_id=teacher_id,
                        status="published", price=0, created_at=created, updated_at=updated,
                        published_at=published, review_requested_at=review)
        db.session.add(course)
        db.session.flush()
        module = Module(course_id=course.id, title="M", position=1, created_at=review,
                        updated_at=published)
        db.session.add(module)
        db.session.flush()
        db.session.add(Lesson(module_id=module.id, title="L", position=1, is_preview=True,
                              created_at=updated, updated_at=created))
        db.session.commit()
        # `updated_at` moves on update only: the values are the ones given.
        return course.id


@pytest.mark.parametrize("shift", range(len(MOMENTS)))
def test_a_list_and_a_course_page_write_each_timestamp_as_the_entity_does(app, client, make_user,
                                                                          shift):
    moments = MOMENTS[shift:] + MOMENTS[:shift]
    course_id = _course_at(app, make_user("instructor"), moments)
    listed = ok(client.get(f"{API}/public/get-courses"))["courses"][0]
    page = ok(client.get(f"{API}/public/courses/{course_id}"))["course"]
    with app.app_context():
        course = db.session.get(Course, course_id)
        expected = course.to_dict()
        module = db.session.scalar(select(Module).filter_by(course_id=course_id))
        lesson = db.session.scalar(select(Lesson).filter_by(module_id=module.id))
        module_dict, lesson_dict = module.to_dict(), lesson.to_dict(full_content=False)
    for field in ("created_at", "updated_at", "published_at", "review_requested_at"):
        assert listed[field] == page[field] == expected[field], field
    assert [listed["created_at"], listed["updated_at"], listed["published_at"],
            listed["review_requested_at"]] == [iso(m) for m in moments]
    [answered_module] = page["modules"]
    [answered_lesson] = answered_module["lessons"]
    for field in ("created_at", "updated_at"):
        assert answered_module[field] == module_dict[field], field
        assert answered_lesson[field] == lesson_dict[field], field


def test_iso_text_reads_null_as_none_and_leaves_other_columns_alone(app, make_user):
    teacher_id = make_user("instructor")
    with app.app_context():
        db.session.add(Course(title="No dates", slug="no-dates", instructor_id=teacher_id))
        db.session.commit()
        columns = as_text((Course.__table__.c.id, Course.__table__.c.published_at,
                           Course.__table__.c.created_at))
        assert columns[0] is Course.__table__.c.id
        row = db.session.execute(select(*columns).where(Course.slug == "no-dates")).one()
        assert row.published_at is None and isinstance(row.created_at, str)
        assert row.created_at == iso(db.session.scalar(select(Course.created_at).where(
            Course.slug == "no-dates")))
        assert db.session.scalar(select(iso_text(Course.__table__.c.published_at))) is None


def test_only_reads_that_return_every_row_they_read_take_the_text(app, client, make_user,
                                                                  auth_headers):
    """Below a sort cut by a LIMIT, PostgreSQL would write the text of every row it sorts (a
    search matching 1,000 courses: 4,000 to_char calls). A catalog page takes the text in a
    projection over its sorted, limited page (utils/pagination._page_read_as); on PostgreSQL
    its page reads ids and row versions, and the text is taken by the cards of the courses
    it keeps no summary of, read by id (services/course_service.catalog_page); the other lists
    keep their datetimes; one course's card with its outline (one statement) takes the
    text."""
    course_id = _course_at(app, make_user("instructor"), MOMENTS)
    headers = auth_headers(make_user())
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    for path, listed in ((f"{API}/public/get-courses", "over the page"),
                         (f"{API}/public/courses/search?q=times", "over the page"),
                         (f"{API}/users/enrolled-courses", True), (f"{API}/notifications", True),
                         (f"{API}/users/certificates", True),
                         (f"{API}/public/courses/{course_id}", False)):
        with recorded_statements(app) as statements:
            ok(client.get(path, headers=headers))
        texts = [s for s in statements if "to_char(" in s]
        if listed == "over the page" and postgres:
            # The list's new course read once by id (the search after it keeps its summary).
            assert len(texts) == path.endswith("get-courses"), path
            assert all("ANY (" in text and "ORDER BY" not in text for text in texts), path
            (page,) = [s for s in statements if "ANY (" not in s]
            assert "xmin" in page and "to_char(" not in page, path
        elif listed:
            assert texts == [], path
        elif postgres:
            assert len(texts) == 1, path  # the card with its outline
