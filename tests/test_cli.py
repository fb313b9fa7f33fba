"""The Flask CLI: create-admin, seed-demo (idempotent), the shell context, and the README's
hand-made admin snippet."""
from __future__ import annotations

import re

import pytest

from sqlalchemy import func, select

import models
from models import Course, Lesson, MasterCategory, Module, Subcategory, User, db
from services.demo_catalog import DEMO_INSTRUCTOR, DEMO_STUDENT

PASSWORD_INPUT = "S3cretpass\nS3cretpass\n"
LOGIN_LINE = re.compile(r"log in as (\S+) with password (\S+)")
SEEDED_MODELS = (User, MasterCategory, Subcategory, Course, Module, Lesson)


def _count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def _counts(app) -> dict[str, int]:
    with app.app_context():
        return {model.__tablename__: _count(model) for model in SEEDED_MODELS}


# ---------------------------------------------------------------------------------------------
# create-admin
# ---------------------------------------------------------------------------------------------


def test_create_admin_creates_a_verified_active_admin(app, runner):
    result = runner.invoke(args=["create-admin", "--email", "  Boss@Example.COM "],
                           input=PASSWORD_INPUT)

    assert result.exit_code == 0, result.output
    assert "Admin user created with ID" in result.output
    with app.app_context():
        users = db.session.scalars(select(User)).all()
        assert len(users) == 1
        admin = users[0]
        assert f"Admin user created with ID: {admin.id}" in result.output
        assert admin.email == "boss@example.com"
        assert admin.role == "admin"
        assert admin.is_active is True
        assert admin.is_email_verified is True
        assert admin.check_password("S3cretpass")
        assert not admin.check_password("wrong-password")


def test_create_admin_refuses_an_email_in_use(app, runner, make_user):
    make_user(role="student", email="taken@example.com")

    result = runner.invoke(args=["create-admin", "--email", "TAKEN@example.com"],
                           input=PASSWORD_INPUT)

    assert result.exit_code != 0
    assert "already exists" in result.output
    with app.app_context():
        assert _count(User) == 1
        user = db.session.scalar(select(User))
        assert user.role == "student"


@pytest.mark.parametrize("password, fragment", [
    ("short7!", "at least 8 characters"),
    ("nodigitshere", "must contain a digit"),
])
def test_create_admin_applies_the_password_policy(app, runner, password, fragment):
    result = runner.invoke(args=["create-admin", "--email", "boss@example.com"],
                           input=f"{password}\n{password}\n")

    assert result.exit_code != 0
    assert fragment in result.output
    with app.app_context():
        assert _count(User) == 0


def test_create_admin_refuses_an_invalid_email(app, runner):
    result = runner.invoke(args=["create-admin", "--email", "not-an-email"], input=PASSWORD_INPUT)

    assert result.exit_code != 0 and "Invalid email" in result.output
    with app.app_context():
        assert _count(User) == 0


# ---------------------------------------------------------------------------------------------
# seed-demo
# ---------------------------------------------------------------------------------------------


def test_seed_demo_builds_a_published_ordered_catalog(app, runner):
    result = runner.invoke(args=["seed-demo"])

    assert result.exit_code == 0, result.output
    with app.app_context():
        courses = db.session.scalars(select(Course).order_by(Course.id)).all()
        assert len(courses) >= 1
        assert f"Demo catalog: {len(courses)} course(s) created." in result.output
        instructor = db.session.scalar(select(User).where(User.email == DEMO_INSTRUCTOR))
        student = db.session.scalar(select(User).where(User.email == DEMO_STUDENT))
        assert instructor is not None and instructor.role == "instructor"
        assert student is not None and student.role == "student"
        for course in courses:
            assert course.status == "published"
            assert course.published_at is not None
            assert course.instructor_id == instructor.id
            assert course.subcategory_id is not None
            assert course.modules, course.slug
            module_positions = [m.position for m in course.modules]
            assert module_positions == sorted(module_positions)
            assert len(set(module_positions)) == len(module_positions)
            for module in course.modules:
                assert module.lessons, module.title
                lesson_positions = [lesson.position for lesson in module.lessons]
                assert lesson_positions == sorted(lesson_positions)
                assert len(set(lesson_positions)) == len(lesson_positions)


def test_seed_demo_prints_passwords_that_work(app, runner):
    result = runner.invoke(args=["seed-demo"])

    assert result.exit_code == 0, result.output
    logins = dict(LOGIN_LINE.findall(result.output))
    assert set(logins) == {DEMO_INSTRUCTOR, DEMO_STUDENT}
    with app.app_context():
        for email, password in logins.items():
            user = db.session.scalar(select(User).where(User.email == email))
            assert user is not None
            assert user.is_active and user.is_email_verified
            assert user.check_password(password), email
            assert not user.check_password(password + "x")


def test_seed_demo_twice_creates_nothing_new(app, runner):
    first = runner.invoke(args=["seed-demo"])
    assert first.exit_code == 0, first.output
    after_first = _counts(app)
    assert all(after_first.values()), after_first

    second = runner.invoke(args=["seed-demo"])

    assert second.exit_code == 0, second.output
    assert _counts(app) == after_first
    assert "0 course(s) created" in second.output
    assert LOGIN_LINE.search(second.output) is None
    assert "already existed" in second.output


def test_seed_demo_if_empty_on_a_non_empty_catalog_changes_nothing(app, runner, make_user):
    instructor_id = make_user(role="instructor")
    with app.app_context():
        db.session.add(Course(instructor_id=instructor_id, title="Existing", slug="existing"))
        db.session.commit()
    before = _counts(app)

    result = runner.invoke(args=["seed-demo", "--if-empty"])

    assert result.exit_code == 0, result.output
    assert "nothing seeded" in result.output
    assert _counts(app) == before
    with app.app_context():
        assert db.session.scalar(select(User.id).where(User.email == DEMO_STUDENT)) is None


def test_seed_demo_if_empty_on_an_empty_catalog_seeds(app, runner):
    result = runner.invoke(args=["seed-demo", "--if-empty"])

    assert result.exit_code == 0, result.output
    assert "nothing seeded" not in result.output
    with app.app_context():
        assert _count(Course) > 0


# ---------------------------------------------------------------------------------------------
# The shell context and the README snippet
# ---------------------------------------------------------------------------------------------


def test_shell_context_has_db_and_every_model(app):
    with app.app_context():  # as `flask shell` builds it
        context = app.make_shell_context()

    assert context["db"] is db
    for name in ("User", "Course", "Enrollment", "Payment", "Certificate", "Lesson",
                 "LiveSession", "WebhookEvent", "AuditLog"):
        assert context[name] is getattr(models, name)
    every_model = {mapper.class_.__name__: mapper.class_ for mapper in db.Model.registry.mappers}
    missing = set(every_model) - set(context)
    assert not missing
    for name, cls in every_model.items():
        assert context[name] is cls


def test_readme_admin_snippet_works_as_written(app):
    with app.app_context():
        from models import User, db

        admin = User(email="admin@aifirstacademy.com", phone_number="+1234567890",
                     first_name="Admin", last_name="User", role="admin", is_active=True,
                     is_email_verified=True, is_phone_verified=True)
        admin.set_password("Admin@123")
        db.session.add(admin)
        db.session.commit()

        assert isinstance(admin.id, int)
        assert admin.check_password("Admin@123") is True
        admin_id = admin.id

    with app.app_context():
        stored = db.session.get(User, admin_id)
        assert stored.email == "admin@aifirstacademy.com"
        assert stored.role == "admin"
        assert stored.is_phone_verified is True
        assert stored.check_password("Admin@123") is True
