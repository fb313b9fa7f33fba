"""Files under /files: lesson resource upload and download, course thumbnails, profile pictures
(the same views as their RESTful homes)."""
from __future__ import annotations

from flask import Blueprint, request
from pydantic import Field
from spectree import Response

from auth import current_user, instructor_required, login_required
from models import db
from services import course_service, file_service
from utils.extensions import limiter
from utils.responses import CourseSavedResponse, LessonResourceSavedResponse
from utils.routing import alias, form_id, form_text
from utils.validation import StrictModel, UploadFile, document, errors

bp = Blueprint("files", __name__)
AUTH = {"tags": ["files"], "security": {"bearer": []}}

alias(bp, "/upload-profile-picture", "auth.upload_profile_picture", methods=["POST"])


class UploadForm(StrictModel):
    """A file to attach to a lesson."""

    lesson_id: int = Field(ge=1, description="The lesson (the query string is read too)")
    file: UploadFile = Field(description="An image, pdf, video, audio file or document; its "
                                         "extension and its leading bytes must agree")
    title: str | None = Field(None, max_length=200, description="Defaults to the file's name")
    description: str | None = Field(None, max_length=5000)


class DownloadQuery(StrictModel):
    inline: bool = Field(False, description="Show a video, audio file, image or pdf in the "
                                            "browser rather than download it")


class CourseThumbnailForm(StrictModel):
    """A course's cover image."""

    course_id: int = Field(ge=1, description="The course (the query string is read too)")
    file: UploadFile = Field(description="png, jpg, jpeg, gif or webp (the field `thumbnail` "
                                         "is read too)")


@bp.post("/upload")
@limiter.limit("20 per hour")
@instructor_required
@document(form=UploadForm, resp=Response(HTTP_201=LessonResourceSavedResponse,
                                         **errors(401, 403, 404, 413, 415, 422)), **AUTH)
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
@document(form=CourseThumbnailForm, resp=Response(HTTP_200=CourseSavedResponse,
                                                 **errors(401, 403, 404, 413, 415, 422)), **AUTH)
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
@document(query=DownloadQuery, resp=Response("HTTP_200", "HTTP_206", **errors(401, 403, 404, 416)),
          media={200: {"application/octet-stream": "The file, in its own media type"},
                 206: {"application/octet-stream": "The range asked for (`Range` header)"}},
          **AUTH)
def download(resource_id: int):
    """Stream a lesson resource (enrolled students, the owner, admins), with Range support."""
    resource = course_service.readable_resource(resource_id, current_user())
    inline = request.args.get("inline", "").lower() in ("1", "true", "yes") and \
        resource.file_type in ("video", "audio", "image", "pdf")
    return file_service.serve(resource.stored_path, mime_type=resource.mime_type,
                              download_name=resource.original_filename, as_attachment=not inline)
