"""The signed-in user's own space under /users (the dashboard and course lists arrive with
enrollment); /users/profile is the same view as /auth/profile."""
from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import current_user, instructor_required, login_required
from services import catalog_service, certificate_service, course_service, enrollment_service
from utils.read_only import read_only
from utils.pipeline.signed_in_fast_path import signed_in_read
from utils.responses import (
    AmountOut,
    CertificateListResponse,
    CourseListResponse,
    EnrollmentListResponse,
    Timestamp,
)
from utils.routing import alias
from utils.schemas import TeachingQuery
from utils.validation import PageQuery, errors, query_args, validate

AUTH = {"tags": ["users"], "security": {"bearer": []}}

bp = Blueprint("users", __name__)


class StudentStatsOut(TypedDict):
    """Counts over the user's open enrollments."""

    enrolled_courses: int
    in_progress_courses: Annotated[int, Field(description="Started, not completed")]
    completed_courses: int
    not_started_courses: int
    certificates: Annotated[int, Field(description="Valid certificates")]
    total_spent: Annotated[list[AmountOut], Field(description="Paid less refunded, per currency")]


class ActivityOut(TypedDict):
    """A lesson the user opened or completed."""

    type: Literal["lesson_completed", "lesson_viewed"]
    lesson_id: int
    lesson_title: str
    course_id: int
    course_title: str
    at: Timestamp


class StudentDashboardResponse(TypedDict):
    """The student's dashboard."""

    stats: StudentStatsOut
    recent_activity: Annotated[list[ActivityOut], Field(description="Newest first, at most 10")]


def _dashboard(caller, _args) -> dict:
    return enrollment_service.dashboard(caller)


def _enrolled(caller, args) -> dict:
    return enrollment_service.learner_enrollment_page(
        caller.id, enrollment_service.OPEN_STATUSES, args.page, args.per_page)


def _certificates(caller, args) -> dict:
    return certificate_service.holder_page(caller.id, args.page, args.per_page)


@bp.get("/dashboard")
@signed_in_read(_dashboard)
@login_required
@validate(resp=Response(HTTP_200=StudentDashboardResponse, **errors(401)), **AUTH)
@read_only
def dashboard():
    """Counts (enrolled, in progress, completed, certificates, total spent) and recent activity."""
    return _dashboard(current_user(), None)


@bp.get("/enrolled-courses")
@bp.get("/my-courses")
@signed_in_read(_enrolled)
@login_required
@validate(query=PageQuery, resp=Response(HTTP_200=EnrollmentListResponse, **errors(401)), **AUTH)
@read_only
def enrolled_courses():
    """Courses the user is enrolled in (active or completed), with progress."""
    return _enrolled(current_user(), query_args())


@bp.get("/completed-courses")
@login_required
@validate(query=PageQuery, resp=Response(HTTP_200=EnrollmentListResponse, **errors(401)), **AUTH)
@read_only
def completed_courses():
    """Courses the user completed, with progress."""
    args = query_args()
    return enrollment_service.learner_enrollment_page(current_user().id, ("completed",),
                                                      args.page, args.per_page)


@bp.get("/certificates")
@signed_in_read(_certificates)
@login_required
@validate(query=PageQuery, resp=Response(HTTP_200=CertificateListResponse, **errors(401)), **AUTH)
@read_only
def certificates():
    """Certificates the user has earned."""
    return _certificates(current_user(), query_args())


@bp.get("/my-teaching-courses")
@instructor_required
@validate(query=TeachingQuery, resp=Response(HTTP_200=CourseListResponse, **errors(401, 403)),
          tags=["users", "courses"], security={"bearer": []})
def my_teaching_courses():
    """The courses the signed-in instructor teaches, in every status."""
    args = query_args()
    query = catalog_service.teaching_query(current_user(), args.status, args.filters())
    return course_service.course_page(query, args.page, args.per_page)


alias(bp, "/profile", "auth.get_profile", methods=["GET"])
alias(bp, "/profile", "auth.update_profile", endpoint="update_profile", methods=["PUT"])
