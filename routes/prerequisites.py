"""The API documentation's /prerequisites paths: the same views as /courses/<id>/prerequisites."""
from __future__ import annotations

from flask import Blueprint

from utils.routing import alias

bp = Blueprint("prerequisites", __name__)

alias(bp, "/create-prerequisites/<int:course_id>", "courses.add_prerequisites", methods=["POST"])
alias(bp, "/get-prerequisites/<int:course_id>", "courses.get_prerequisites", methods=["GET"])
alias(bp, "/update-prerequisites/<int:course_id>", "courses.replace_prerequisites",
      methods=["PUT"])
alias(bp, "/delete-prerequisites/<int:course_id>/<int:prerequisite_id>",
      "courses.remove_prerequisite", methods=["DELETE"])
