"""The signed-in user's own space under /users (the dashboard and course lists arrive with
enrollment); /users/profile is the same view as /auth/profile."""
from __future__ import annotations

from flask import Blueprint
from spectree import Response

from auth import instructor_required
from routes import auth_routes, course_routes
from routes.common import Envelope
from utils.validation import errors, query_args, validate

bp = Blueprint("users", __name__)


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
