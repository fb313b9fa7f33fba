"""The API documentation's /prerequisites paths: the same views as /courses/<id>/prerequisites."""
from __future__ import annotations

from flask import Blueprint

from routes import course_routes

bp = Blueprint("prerequisites", __name__)

bp.add_url_rule("/create-prerequisites/<int:course_id>", methods=["POST"],
                view_func=course_routes.add_prerequisites)
bp.add_url_rule("/get-prerequisites/<int:course_id>", methods=["GET"],
                view_func=course_routes.get_prerequisites)
bp.add_url_rule("/update-prerequisites/<int:course_id>", methods=["PUT"],
                view_func=course_routes.replace_prerequisites)
bp.add_url_rule("/delete-prerequisites/<int:course_id>/<int:prerequisite_id>", methods=["DELETE"],
                view_func=course_routes.remove_prerequisite)
