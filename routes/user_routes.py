"""The signed-in user's own space under /users (the dashboard and course lists arrive with
enrollment); /users/profile is the same view as /auth/profile."""
from __future__ import annotations

from flask import Blueprint
from spectree import Response

from auth import current_user, instructor_required, login_required
from routes import auth_routes, course_routes
from routes.common import Envelope
from routes.enrollments_routes import enrollment_page
from services import enrollment_service
from utils.pagination import paginate
from utils.validation import PageQuery, errors, query_args, validate

AUTH = {"tags": ["users"], "security": {"bearer": []}}

bp = Blueprint("users", __name__)


@bp.get("/dashboard")
@login_required
@validate(resp=Response(HTTP_200=Envelope, **errors(401)), **AUTH)
def dashboard():
    """Counts (enrolled, in progress, completed, certificates, total spent) and recent activity."""
    return enrollment_service.dashboard(current_user())


@bp.get("/enrolled-courses")
@bp.get("/my-courses")
@login_required
@validate(query=PageQuery, resp=Response(HTTP_200=Envelope, **errors(401)), **AUTH)
def enrolled_courses():
    """Courses the user is enrolled in (active or completed), with progress."""
    query = enrollment_service.enrollments_query(
        user_id=current_user().id, statuses=enrollment_service.OPEN_STATUSES)
    return enrollment_page(query, query_args())


@bp.get("/completed-courses")
@login_required
@validate(query=PageQuery, resp=Response(HTTP_200=Envelope, **errors(401)), **AUTH)
def completed_courses():
    query = enrollment_service.enrollments_query(user_id=current_user().id,
                                                 statuses=("completed",))
    return enrollment_page(query, query_args())


@bp.get("/certificates")
@login_required
@validate(query=PageQuery, resp=Response(HTTP_200=Envelope, **errors(401)), **AUTH)
def certificates():
    """Certificates the user has earned."""
    args = query_args()
    rows, meta = paginate(enrollment_service.certificates_query(current_user().id),
                          args.page, args.per_page)
    return {"certificates": [c.to_dict() for c in rows], "pagination": meta}


@bp.get("/my-teaching-courses")
@instructor_required
@validate(query=course_routes.TeachingQuery, resp=Response(HTTP_200=Envelope, **errors(401, 403)),
          tags=["users", "courses"], security={"bearer": []})
def my_teaching_courses():
    """The courses the signed-in instructor teaches, in every status."""
    return course_routes.teaching_page(query_args())

bp.add_url_rule("/profile", view_func=auth_routes.get_profile, methods=["GET"])
bp.add_url_rule("/profile", endpoint="update_profile", view_func=auth_routes.update_profile,
                methods=["PUT"])
