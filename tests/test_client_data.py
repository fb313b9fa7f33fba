"""What a SPA needs in one call (issue 18): the certificate in the answer that completes a
course, a verification URL on every certificate, per-lesson completion in an enrolled
student's outline, and a course that says it awaits review. Status, body and database."""
from __future__ import annotations

import pytest

from models import Certificate, Course, Enrollment, db
from tests.support.assertions import error, fetch, ok

API = "/api/v1"


@pytest.fixture
def people(make_user, auth_headers):
    ids = {role: make_user(role) for role in ("instructor", "student", "admin")}
    ids["other"] = make_user("student")
    return {name: (uid, auth_headers(uid)) for name, uid in ids.items()}


def build_course(client, headers, title: str, lessons: int, publish: bool = True) -> tuple:
    course = ok(client.post(f"{API}/courses", json={"title": title}, headers=headers),
                201)["course"]
    module = ok(client.post(f"{API}/courses/{course['id']}/modules", json={"title": "M1"},
                            headers=headers), 201)["module"]
    lesson_ids = [ok(client.post(f"{API}/lessons/create-lessons/{module['id']}",
                                 json={"title": f"L{n}", "content": "text"}, headers=headers),
                     201)["lesson"]["id"] for n in range(lessons)]
    if publish:
        ok(client.put(f"{API}/courses/{course['id']}", json={"status": "published"},
                      headers=headers))
    return course["id"], lesson_ids


def enroll(client, headers, course_id: int) -> int:
    return ok(client.post(f"{API}/enrollments", json={"course_id": course_id}, headers=headers),
              201)["enrollment"]["id"]


def test_completing_a_course_answers_with_its_certificate(app, client, people):
    _, teacher = people["instructor"]
    student_id, student = people["student"]
    course_id, lessons = build_course(client, teacher, "Statistics", 2)
    enrollment_id = enroll(client, student, course_id)

    first = ok(client.post(f"{API}/enrollments/{enrollment_id}/lessons/{lessons[0]}/complete",
                           headers=student))
    assert first["course_completed"] is False and first["certificate"] is None

    last = ok(client.post(f"{API}/enrollments/{enrollment_id}/lessons/{lessons[1]}/complete",
                          headers=student))
    assert last["course_completed"] is True
    certificate = last["certificate"]
    stored = fetch(app, Certificate, Certificate.user_id == student_id,
                   Certificate.course_id == course_id)
    assert certificate["certificate_number"] == stored.certificate_number
    assert certificate["download_url"] == f"{API}/certificates/{stored.id}/download"
    assert certificate["verify_url"] == \
        f"{app.config['PUBLIC_BASE_URL']}/verify/{stored.certificate_number}"
    assert certificate["status"] == "valid" and certificate["course_id"] == course_id
    # The verification URL opens the public page for that certificate.
    page = client.get(certificate["verify_url"].removeprefix(app.config["PUBLIC_BASE_URL"]))
    assert page.status_code == 200 and "Valid certificate" in page.get_data(as_text=True)

    # Later answers for the completed enrollment keep naming it; the course path does too.
    again = ok(client.put(f"{API}/enrollments/get-enrollments/{course_id}/lessons/"
                          f"{lessons[0]}/progress", json={"watch_time_seconds": 30},
                          headers=student))
    assert again["course_completed"] is False
    assert again["certificate"]["certificate_number"] == stored.certificate_number
    assert fetch(app, Enrollment, Enrollment.id == enrollment_id).status == "completed"


def test_every_certificate_carries_its_verification_url(app, client, people):
    _, teacher = people["instructor"]
    student_id, student = people["student"]
    _, admin = people["admin"]
    course_id, lessons = build_course(client, teacher, "Algebra", 1)
    enrollment_id = enroll(client, student, course_id)
    done = ok(client.post(f"{API}/enrollments/{enrollment_id}/lessons/{lessons[0]}/complete",
                          headers=student))
    number = done["certificate"]["certificate_number"]
    url = f"{app.config['PUBLIC_BASE_URL']}/verify/{number}"
    certificate_id = done["certificate"]["id"]

    listed = [ok(client.get(f"{API}/users/certificates", headers=student))["certificates"],
              ok(client.get(f"{API}/certificates", headers=student))["certificates"],
              ok(client.get(f"{API}/certificates/get-certificate", headers=student))
              ["certificates"],
              ok(client.get(f"{API}/certificates?user_id={student_id}", headers=admin))
              ["certificates"]]
    for certificates in listed:
        assert [c["verify_url"] for c in certificates] == [url]
    assert ok(client.get(f"{API}/certificates/{certificate_id}", headers=student)) \
        ["certificate"]["verify_url"] == url
    generated = ok(client.post(f"{API}/certificates/generate/{course_id}", json={},
                               headers=student))  # already issued: 200 with the same one
    assert generated["certificate"]["verify_url"] == url
    revoked = ok(client.put(f"{API}/admin/certificates/{certificate_id}/revoke",
                            json={"reason": "issued by mistake"}, headers=admin))
    assert revoked["certificate"]["verify_url"] == url
    assert revoked["certificate"]["status"] == "revoked"
    # Someone else's certificate stays out of reach, URL or not.
    error(client.get(f"{API}/certificates/{certificate_id}", headers=people["other"][1]), 404)


def test_the_enrolled_outline_says_which_lessons_are_completed(app, client, people):
    _, teacher = people["instructor"]
    _, student = people["student"]
    _, other = people["other"]
    course_id, lessons = build_course(client, teacher, "Geometry", 3)
    enrollment_id = enroll(client, student, course_id)
    enroll(client, other, course_id)
    ok(client.post(f"{API}/enrollments/{enrollment_id}/lessons/{lessons[1]}/complete",
                   headers=student))

    def flags(body_course_or_modules):
        modules = body_course_or_modules
        return [lesson["completed"] for module in modules for lesson in module["lessons"]]

    course = ok(client.get(f"{API}/courses/{course_id}", headers=student))["course"]
    assert course["access"] == "enrolled" and flags(course["modules"]) == [False, True, False]
    public = ok(client.get(f"{API}/public/courses/{course_id}", headers=student))["course"]
    assert flags(public["modules"]) == [False, True, False]
    outline = ok(client.get(f"{API}/courses/{course_id}/modules", headers=student))
    assert flags(outline["modules"]) == [False, True, False]
    module_id = outline["modules"][0]["id"]
    module = ok(client.get(f"{API}/modules/{module_id}", headers=student))["module"]
    assert [lesson["completed"] for lesson in module["lessons"]] == [False, True, False]

    # Another student's progress is their own; readers who are not enrolled get null.
    assert flags(ok(client.get(f"{API}/courses/{course_id}", headers=other))["course"]
                 ["modules"]) == [False, False, False]
    assert flags(ok(client.get(f"{API}/courses/{course_id}"))["course"]["modules"]) == \
        [None, None, None]
    assert flags(ok(client.get(f"{API}/courses/{course_id}", headers=teacher))["course"]
                 ["modules"]) == [None, None, None]
    # A guest's copy is cached and shared: it never carries anyone's progress.
    assert flags(ok(client.get(f"{API}/public/courses/{course_id}"))["course"]["modules"]) == \
        [None, None, None]


def test_a_course_submitted_for_review_says_it_awaits_review(app, client, people):
    _, teacher = people["instructor"]
    _, admin = people["admin"]
    course_id, _ = build_course(client, teacher, "Topology", 1, publish=False)
    draft = ok(client.get(f"{API}/courses/get-courses/{course_id}", headers=teacher))["course"]
    assert draft["awaiting_review"] is False and draft["review_requested_at"] is None

    submitted = ok(client.post(f"{API}/courses/{course_id}/submit-review", headers=teacher))
    assert "awaits" in submitted["message"]
    course = submitted["course"]
    assert course["status"] == "draft" and course["awaiting_review"] is True
    stored = fetch(app, Course, Course.id == course_id)
    assert stored.review_requested_at is not None
    assert course["review_requested_at"] == stored.review_requested_at.isoformat(
        timespec="seconds")
    pending = ok(client.get(f"{API}/admin/courses/pending", headers=admin))["courses"]
    assert [(c["id"], c["awaiting_review"]) for c in pending] == [(course_id, True)]
    assert ok(client.get(f"{API}/courses/get-courses", headers=teacher))["courses"][0] \
        ["awaiting_review"] is True

    published = ok(client.put(f"{API}/admin/courses/{course_id}/publish", headers=admin))
    assert published["course"]["status"] == "published"
    assert published["course"]["awaiting_review"] is False
    assert published["course"]["review_requested_at"] is None
    assert fetch(app, Course, Course.id == course_id).review_requested_at is None
    assert ok(client.get(f"{API}/admin/courses/pending", headers=admin))["courses"] == []
    # A published course cannot be submitted again.
    error(client.post(f"{API}/courses/{course_id}/submit-review", headers=teacher), 409)
    with app.app_context():
        assert db.session.get(Course, course_id).status == "published"
