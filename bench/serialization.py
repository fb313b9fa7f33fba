"""What shaping an answer through its declared model costs, on the hot reads.

    .venv/bin/python bench/serialization.py

Builds a catalog on in-memory SQLite (24 published courses, one of 6 modules x 5 lessons with
a resource each; a student enrolled in 12 with progress, 20 notifications and 20
certificates), requests each hot read once through the app to capture the dict its view
returns and the body model its declaration names, then times, per answer:

- flask: `app.json.response(body)`, what the views' dicts went through before;
- shaped: `TypeAdapter(model).dump_json(body)` into a response, what production does now;
- checked: the same after the strict validation tests and the debugger add.

A micro-benchmark of the serialization step only (no database, no request pipeline); the
whole API under load is `make bench`.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import timeit
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TMPDIR", tempfile.gettempdir())

from flask_jwt_extended import create_access_token  # noqa: E402

import utils.validation as validation  # noqa: E402
from app import create_app  # noqa: E402
from models import (  # noqa: E402
    Certificate,
    Course,
    Enrollment,
    Lesson,
    LessonProgress,
    LessonResource,
    MasterCategory,
    Module,
    Notification,
    Subcategory,
    User,
    db,
)
from utils.helpers import utcnow  # noqa: E402

HOT_READS = [
    ("public course list (20)", "/api/v1/public/get-courses?per_page=20", None),
    ("public course detail", "/api/v1/public/courses/{big}", None),
    ("enrolled course detail", "/api/v1/courses/{big}", "student"),
    ("student dashboard", "/api/v1/users/dashboard", "student"),
    ("enrolled courses (12)", "/api/v1/users/enrolled-courses", "student"),
    ("unread count", "/api/v1/notifications/unread-count", "student"),
    ("notifications (20)", "/api/v1/notifications", "student"),
    ("progress (30 lessons)", "/api/v1/enrollments/{enrollment}/progress", "student"),
    ("certificates (20)", "/api/v1/certificates", "student"),
]


def seed(app) -> dict:
    with app.app_context():
        db.create_all()
        teacher = User(email="t@example.com", first_name="Grace", last_name="Hopper",
                       role="instructor", headline="Compilers")
        student = User(email="s@example.com", first_name="Ada", last_name="Lovelace")
        master = MasterCategory(name="Data", slug="data")
        db.session.add_all([teacher, student, master])
        db.session.flush()
        sub = Subcategory(master_category_id=master.id, name="Python", slug="python")
        db.session.add(sub)
        db.session.flush()
        courses = []
        for n in range(24):
            course = Course(title=f"Course {n} on data analysis", slug=f"course-{n}",
                            short_description="Learn to clean, explore and chart data. " * 2,
                            description="A long description. " * 40, price=Decimal("49.99"),
                            currency="USD", learning_outcomes=["Clean data", "Chart it"],
                            status="published", subcategory_id=sub.id, instructor_id=teacher.id,
                            published_at=utcnow())
            db.session.add(course)
            courses.append(course)
        db.session.flush()
        big = courses[0]
        lessons = []
        for m in range(6):
            module = Module(course_id=big.id, title=f"Module {m}", position=m)
            db.session.add(module)
            db.session.flush()
            for n in range(5):
                lesson = Lesson(module_id=module.id, title=f"Lesson {m}.{n}", position=n,
                                content="Body " * 200, video_url="https://video.example/x",
                                duration_minutes=12, is_preview=n == 0)
                db.session.add(lesson)
                db.session.flush()
                lessons.append(lesson)
                db.session.add(LessonResource(
                    lesson_id=lesson.id, title="Slides", original_filename="slides.pdf",
                    stored_path=f"resources/{lesson.id}.pdf", mime_type="application/pdf",
                    file_type="pdf", file_size=123456))
        enrollments = []
        for course in courses[:12]:
            enrollment = Enrollment(user_id=student.id, course_id=course.id, status="active",
                                    enrolled_at=utcnow(), started_at=utcnow())
            db.session.add(enrollment)
            enrollments.append(enrollment)
        db.session.flush()
        for lesson in lessons[:17]:
            db.session.add(LessonProgress(enrollment_id=enrollments[0].id, lesson_id=lesson.id,
                                          completed=True, completed_at=utcnow(),
                                          watch_time_seconds=600))
        for n in range(20):
            db.session.add(Notification(user_id=student.id, kind="course_update",
                                        title=f"Update {n}", message="Something changed. " * 5,
                                        link="/courses/1", data={"course_id": 1}))
            db.session.add(Certificate(
                certificate_number=f"AIFA-{courses[n].id}-{student.id}-{n:010d}",
                user_id=student.id, course_id=courses[n].id, holder_name="Ada Lovelace",
                course_title=courses[n].title, instructor_name="Grace Hopper",
                completion_date=date.today() - timedelta(days=n), sha256="ab" * 32))
        db.session.commit()
        return {"big": big.id, "enrollment": enrollments[0].id,
                "token": create_access_token(db.session.get(User, student.id))}


def main() -> None:
    app = create_app("testing", overrides={"CATALOG_CACHE_SECONDS": 0,
                                           "RATELIMIT_ENABLED": False})
    ids = seed(app)
    captured: list = []
    original = validation.shaped

    def capture(result, resp):
        body, status, _ = validation._split(result)
        if isinstance(body, dict) and resp is not None:
            captured.append((body, resp.find_model(status)))
        return original(result, resp)

    validation.shaped = capture
    client = app.test_client()
    answers = []
    for name, path, who in HOT_READS:
        captured.clear()
        headers = {"Authorization": f"Bearer {ids['token']}"} if who else {}
        response = client.get(path.format(**ids), headers=headers)
        assert response.status_code == 200 and captured, (name, response.status_code)
        answers.append((name, *captured[-1], len(response.data)))
    validation.shaped = original

    print(f"{'hot read':26} {'bytes':>7} {'flask µs':>9} {'shaped µs':>10} {'checked µs':>11}")
    with app.test_request_context():
        for name, body, model, size in answers:
            adapter = validation._adapter(model)

            def flask_json():
                return app.json.response(body)

            def shaped():
                return app.response_class(adapter.dump_json(body), mimetype="application/json")

            def checked():
                adapter.validate_python(body, strict=True, extra="forbid")
                return shaped()

            row = []
            for fn in (flask_json, shaped, checked):
                number = max(20, int(2000 / max(1, size // 2000)))
                runs = timeit.repeat(fn, number=number, repeat=5)
                row.append(statistics.median(runs) / number * 1e6)
            print(f"{name:26} {size:7} {row[0]:9.1f} {row[1]:10.1f} {row[2]:11.1f}")


if __name__ == "__main__":
    main()
