"""Lesson resources: files attached to lessons. Uploads are multipart; metadata is JSON."""
from __future__ import annotations

from flask import Blueprint, request
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import current_user, instructor_required, login_required
from models import Course, Lesson, LessonResource, Module, db
from services import course_service, file_service
from utils.extensions import limiter
from utils.pagination import page_of
from utils.responses import (
    LessonResourceOut,
    LessonResourceSavedResponse,
    MessageResponse,
    PaginationOut,
)
from utils.routing import form_text, sent_changes
from utils.validation import (
    PageQuery,
    StrictModel,
    UploadFile,
    document,
    errors,
    filters,
    json_body,
    validate,
)

bp = Blueprint("lesson_resources", __name__)
AUTH = {"tags": ["lesson resources"], "security": {"bearer": []}}


class ResourceUpdate(StrictModel):
    title: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=5000)
    position: int | None = Field(None, ge=0, le=10_000)


class ResourceQuery(PageQuery):
    lesson_id: int | None = Field(None, ge=1)


class ResourceForm(StrictModel):
    """A file to attach to the lesson."""

    file: UploadFile = Field(description="An image, pdf, video, audio file or document; its "
                                         "extension and its leading bytes must agree")
    title: str | None = Field(None, max_length=200, description="Defaults to the file's name")
    description: str | None = Field(None, max_length=5000)


class LessonResourceListResponse(TypedDict):
    """A page of lesson resources, by lesson and position."""

    resources: list[LessonResourceOut]
    pagination: PaginationOut


class LessonResourceResponse(TypedDict):
    """A lesson resource."""

    resource: LessonResourceOut


@bp.post("/create-lesson-resources/<int:lesson_id>")
@limiter.limit("20 per hour")
@instructor_required
@document(form=ResourceForm, resp=Response(HTTP_201=LessonResourceSavedResponse,
                                           **errors(401, 403, 404, 413, 415, 422)), **AUTH)
def create_resource(lesson_id: int):
    """Attach a file to a lesson (multipart: `file`, optional `title`, `description`)."""
    resource = course_service.upload_resource(
        lesson_id, current_user(), request.files.get("file"),
        title=form_text("title", 200), description=form_text("description", 5000))
    with file_service.deleted_if_fails(resource.stored_path):
        db.session.commit()
    return {"message": "Resource uploaded", "resource": resource.to_dict()}, 201


@bp.get("/get-lesson-resources")
@bp.post("/get-lesson-resources")
@login_required
@validate(query=ResourceQuery, resp=Response(HTTP_200=LessonResourceListResponse, **errors(401)),
          **AUTH)
def list_resources():
    """Resources the caller may open: of courses they teach (admins: all) or are enrolled in."""
    args = filters(ResourceQuery)
    user = current_user()
    query = (db.select(LessonResource).join(Lesson).join(Module).join(Course)
             .order_by(LessonResource.lesson_id, LessonResource.position, LessonResource.id))
    if user.role != "admin":
        query = query.where(course_service.full_content_readable_by(user))
    if args.lesson_id is not None:
        query = query.where(LessonResource.lesson_id == args.lesson_id)
    return page_of("resources", query, args)


@bp.get("/<int:resource_id>")
@bp.get("/get-lesson-resources/<int:resource_id>")
@bp.post("/get-lesson-resources/<int:resource_id>")
@login_required
@validate(resp=Response(HTTP_200=LessonResourceResponse, **errors(401, 403, 404)), **AUTH)
def get_resource(resource_id: int):
    """A resource's details (enrolled students, the owner, admins); the file is at its
    `download_url`."""
    return {"resource": course_service.readable_resource(resource_id, current_user()).to_dict()}


@bp.put("/<int:resource_id>")
@bp.put("/update-lesson-resources/<int:resource_id>")
@instructor_required
@validate(json=ResourceUpdate, resp=Response(HTTP_200=LessonResourceSavedResponse,
                                             **errors(401, 403, 404)), **AUTH)
def update_resource(resource_id: int):
    """Change a resource's title, description or position (replace the file by uploading anew)."""
    resource = course_service.get_resource(resource_id)
    course_service.ensure_can_edit(course_service.course_of_resource(resource), current_user())
    changes = sent_changes(json_body(), clearable=("description",))
    course_service.update_resource(resource, changes)
    db.session.commit()
    return {"message": "Resource updated", "resource": resource.to_dict()}


@bp.delete("/<int:resource_id>")
@bp.delete("/delete-lesson-resources/<int:resource_id>")
@instructor_required
@validate(resp=Response(HTTP_200=MessageResponse, **errors(401, 403, 404)), **AUTH)
def delete_resource(resource_id: int):
    """Delete a resource and its file."""
    resource = course_service.get_resource(resource_id)
    course_service.ensure_can_edit(course_service.course_of_resource(resource), current_user())
    removal = course_service.delete_resource(resource)
    db.session.commit()
    for path in removal.files:
        file_service.delete(path)
    return {"message": "Resource deleted"}
