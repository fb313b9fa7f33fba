"""The hot statements built once at import are also rendered once: none holds an IN of a list
bound as one "expanding" parameter, which SQLAlchemy renders into the SQL again at every run
(about 20 us of CPU a request on the enrolled course page and the public list). The open
enrollment statuses are bound one by one (models.is_open_enrollment); the catalog's one
status is a plain comparison, an admin's several statuses still an IN of a list."""
from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from models import Enrollment, db, is_open_enrollment
from services import catalog_service, course_service, enrollment_service

DIALECTS = (postgresql.dialect(), sqlite.dialect())


def _rendered_per_run(statement, dialect) -> set:
    return set(statement.compile(dialect=dialect).post_compile_params)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_hot_statements_hold_no_expanding_parameter(dialect):
    statements = {
        "card for a reader": course_service._CARD_FOR_READER,
        "card with outline": course_service._WITH_OUTLINE[True],
        "heartbeat by id": enrollment_service._HEARTBEAT_BY_ID,
        "heartbeat by course": enrollment_service._HEARTBEAT_BY_COURSE,
        "dashboard counts": enrollment_service._DASHBOARD_COUNTS,
    }
    statements["catalog cards by id"] = course_service._CARDS_BY_ID
    for statuses in (None, enrollment_service.OPEN_STATUSES, ("completed",)):
        learner = enrollment_service._learner_page(statuses)
        statements.update({f"learner page {statuses} {key}": statement
                           for key, statement in learner.statements.items()})
    guest = catalog_service.catalog_shape(difficulty="beginner")
    for versions in (False, True):
        page = course_service._list_statement(guest.build, guest.shape, versions)
        statements.update({f"public list {key} {versions}": statement
                           for key, statement in page.statements.items()})
    assert {name: _rendered_per_run(statement, dialect)
            for name, statement in statements.items()
            if _rendered_per_run(statement, dialect)} == {}


def test_open_statuses_are_bound_one_by_one():
    compiled = is_open_enrollment(Enrollment.status).compile(dialect=postgresql.dialect())
    assert not compiled.post_compile_params
    assert sorted(compiled.params.values()) == ["active", "completed"]


def test_the_catalog_binds_one_status_and_an_admin_several(app):
    guest = catalog_service.catalog_shape()
    assert guest.values["status"] == "published" and "statuses" not in guest.values
    several = catalog_service.catalog_shape(statuses=("draft", "published"))
    assert several.values["statuses"] == ("draft", "published")
    assert "status" not in several.values
    built = catalog_service.bound_course_query(several.shape)
    assert "statuses" in {p.key for p in built.compile().post_compile_params}


def test_open_enrollments_are_read_as_before(app, make_user):
    """The bound statuses select what the IN of a list selected, on the suite's database."""
    from models import Course

    student, teacher = make_user("student"), make_user("instructor")
    with app.app_context():
        courses = []
        for n, status in enumerate(("active", "completed", "cancelled", "refunded")):
            course = Course(title=f"Bound {n}", slug=f"bound-{n}", instructor_id=teacher,
                            status="published", price=0)
            db.session.add(course)
            db.session.flush()
            db.session.add(Enrollment(user_id=student, course_id=course.id, status=status))
            courses.append(course.id)
        db.session.commit()
        open_ones = {course_id for course_id in courses
                     if course_service.is_enrolled(student, course_id)}
        assert open_ones == set(courses[:2])
