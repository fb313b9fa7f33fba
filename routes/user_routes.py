"""The signed-in user's own space under /users (the dashboard and course lists arrive with
enrollment); /users/profile is the same view as /auth/profile."""
from __future__ import annotations

from flask import Blueprint

from routes import auth_routes

bp = Blueprint("users", __name__)

bp.add_url_rule("/profile", view_func=auth_routes.get_profile, methods=["GET"])
bp.add_url_rule("/profile", endpoint="update_profile", view_func=auth_routes.update_profile,
                methods=["PUT"])
