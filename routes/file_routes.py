"""Files under /files: lesson resource upload and download, course thumbnails, profile pictures
(the same views as their RESTful homes)."""
from __future__ import annotations

from flask import Blueprint, request
from spectree import Response

from auth import instructor_required, login_required
from routes import auth_routes, course_routes, lessons_resources_routes
from routes.common import Envelope
from services import file_service
from utils.errors import ValidationError
from utils.extensions import limiter
from utils.validation import document, errors, validate

bp = Blueprint("files", __name__)
AUTH = {"tags": ["files"], "security": {"bearer": []}}

bp.add_url_rule("/upload-profile-picture", view_func=auth_routes.upload_profile_picture,
                methods=["POST"])


def _form_id(name: str) -> int:
    raw = request.form.get(name) or request.args.get(name) or ""
    if not raw.strip().isdigit():
        raise ValidationError("Invalid input", details={name: "is required (an integer id)"})
    return int(raw)


@bp.post("/upload")
@limiter.limit("20 per hour")
@instructor_required
@validate(resp=Response(HTTP_201=Envelope, **errors(401, 403, 404, 413, 415)), **AUTH)
def upload():
    """Upload a lesson resource (multipart: `lesson_id`, `file`, optional `title`)."""
    return lessons_resources_routes.upload_resource(_form_id("lesson_id"))


@bp.post("/upload-course-thumbnail")
@limiter.limit("20 per hour")
@instructor_required
@validate(resp=Response(HTTP_200=Envelope, **errors(401, 403, 404, 413, 415)), **AUTH)
def upload_course_thumbnail():
    """Upload a course's cover image (multipart: `course_id`, `file`)."""
    return course_routes.thumbnail_upload(_form_id("course_id"))


@bp.get("/download/<int:resource_id>")
@limiter.limit("100 per hour")
@login_required
@document(resp=Response("HTTP_200", "HTTP_206", **errors(401, 403, 404, 416)), **AUTH)
def download(resource_id: int):
    """Stream a lesson resource (enrolled students, the owner, admins), with Range support."""
    resource = lessons_resources_routes.readable_resource(resource_id)
    inline = request.args.get("inline", "").lower() in ("1", "true", "yes") and \
        resource.file_type in ("video", "audio", "image", "pdf")
    return file_service.serve(resource.stored_path, mime_type=resource.mime_type,
                              download_name=resource.original_filename, as_attachment=not inline)
