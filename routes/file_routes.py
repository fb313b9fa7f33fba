"""Files under /files: lesson resource upload and download, course thumbnails, profile pictures
(the same views as their RESTful homes)."""
from __future__ import annotations

from flask import Blueprint, request
from spectree import Response

from auth import current_user, instructor_required, login_required
from models import db
from services import course_service, file_service
from utils.extensions import limiter
from utils.routing import Envelope, alias, form_id, form_text
from utils.validation import document, errors, validate

bp = Blueprint("files", __name__)
AUTH = {"tags": ["files"], "security": {"bearer": []}}

alias(bp, "/upload-profile-picture", "auth.upload_profile_picture", methods=["POST"])


@bp.post("/upload")
@limiter.limit("20 per hour")
@instructor_required
@validate(resp=Response(HTTP_201=Envelope, **errors(401, 403, 404, 413, 415)), **AUTH)
def upload():
    """Upload a lesson resource (multipart: `lesson_id`, `file`, optional `title`)."""
    resource = course_service.upload_resource(
        form_id("lesson_id"), current_user(), request.files.get("file"),
        title=form_text("title", 200), description=form_text("description", 5000))
    with file_service.deleted_if_fails(resource.stored_path):
        db.session.commit()
    return {"message": "Resource uploaded", "resource": resource.to_dict()}, 201


@bp.post("/upload-course-thumbnail")
@limiter.limit("20 per hour")
@instructor_required
@validate(resp=Response(HTTP_200=Envelope, **errors(401, 403, 404, 413, 415)), **AUTH)
def upload_course_thumbnail():
    """Upload a course's cover image (multipart: `course_id`, `file`)."""
    course, replaced = course_service.replace_thumbnail(
        form_id("course_id"), current_user(),
        request.files.get("file") or request.files.get("thumbnail"))
    db.session.commit()
    file_service.delete(replaced)
    return {"message": "Thumbnail updated", "course": course.to_dict()}


@bp.get("/download/<int:resource_id>")
@limiter.limit("100 per hour")
@login_required
@document(resp=Response("HTTP_200", "HTTP_206", **errors(401, 403, 404, 416)), **AUTH)
def download(resource_id: int):
    """Stream a lesson resource (enrolled students, the owner, admins), with Range support."""
    resource = course_service.readable_resource(resource_id, current_user())
    inline = request.args.get("inline", "").lower() in ("1", "true", "yes") and \
        resource.file_type in ("video", "audio", "image", "pdf")
    return file_service.serve(resource.stored_path, mime_type=resource.mime_type,
                              download_name=resource.original_filename, as_attachment=not inline)
