"""Public uploads under /static/uploads/: profile pictures and course thumbnails only. Lesson
resources and certificates live in the same upload root but are served only by their own
authorised endpoints."""
from __future__ import annotations

from flask import Blueprint

from services import file_service
from utils.errors import NotFound

bp = Blueprint("media", __name__)

@bp.get("/<string:folder>/<string:name>")
def public_media(folder: str, name: str):
    if folder not in file_service.PUBLIC_FOLDERS or "/" in name or name.startswith("."):
        raise NotFound("File not found")
    ext = name.rsplit(".", 1)[-1].lower()
    if ext not in file_service.IMAGE_EXTENSIONS:
        raise NotFound("File not found")
    return file_service.serve(f"{folder}/{name}", mime_type=file_service.ALLOWED[ext][1],
                              public=True)
