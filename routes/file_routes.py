"""File uploads and downloads under /files (lesson resources and thumbnails arrive with the
catalog); the profile picture upload is the same view as /auth/profile/picture."""
from __future__ import annotations

from flask import Blueprint

from routes import auth_routes

bp = Blueprint("files", __name__)

bp.add_url_rule("/upload-profile-picture", view_func=auth_routes.upload_profile_picture,
                methods=["POST"])
