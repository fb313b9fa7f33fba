"""Lessons under /lessons (the API documentation's paths) and their RESTful forms."""
from __future__ import annotations

from flask import Blueprint
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import current_user, instructor_required, login_required
from models import Course, Lesson, Module, db
from services import course_service, file_service
from utils.pagination import page_of
from utils.responses import (
    Access,
    LessonOut,
    LessonResourceOut,
    LessonSavedResponse,
    MessageResponse,
    PaginationOut,
)
from utils.routing import sent_changes
from utils.validation import PageQuery, StrictModel, errors, filters, json_body, validate
from utils.validators import Url

bp = Blueprint("lessons", __name__)
AUTH = {"tags": ["lessons"], "security": {"bearer": []}}


class LessonIn(StrictModel):
    title: str = Field(min_length=1, max_length=200)
    content: str | None = Field(None, max_length=200_000)
    video_url: Url | None = None
    duration_minutes: int | None = Field(None, ge=0, le=100_000)
    position: int | None = Field(None, ge=0, le=10_000)
    is_preview: bool = False


class LessonUpdate(StrictModel):
    title: str | None = Field(None, min_length=1, max_length=200)
    content: str | None = Field(None, max_length=200_000)
    video_url: Url | None = None
    duration_minutes: int | None = Field(None, ge=0, le=100_000)
    position: int | None = Field(None, ge=0, le=10_000)
    is_preview: bool | None = None
    module_id: int | None = Field(None, ge=1, description="move to another module of the course")


NULLABLE = {"content", "video_url", "duration_minutes"}


class LessonQuery(PageQuery):
    module_id: int | None = Field(None, ge=1)
    course_id: int | None = Field(None, ge=1)


class LessonListResponse(TypedDict):
    """A page of lessons, in course order."""

    lessons: list[LessonOut]
    pagination: PaginationOut


class LessonDetailOut(LessonOut):
    """A lesson with its resources (those the reader may open) and its course."""

    resources: list[LessonResourceOut]
    course_id: int


class LessonResponse(TypedDict):
    """A lesson, as the reader may see it."""

    lesson: LessonDetailOut
    access: Access


@bp.post("/create-lessons/<int:module_id>")
@instructor_required
@validate(json=LessonIn, resp=Response(HTTP_201=LessonSavedResponse, **errors(401, 403, 404)),
          **AUTH)
def create_lesson(module_id: int):
    """Add a lesson to a module (at `position`, or at the end)."""
    module = course_service.get_module(module_id)
    course_service.editable_course(module.course_id, current_user())
    lesson = course_service.create_lesson(module, json_body().model_dump(exclude_unset=True))
    db.session.commit()
    return {"message": "Lesson created", "lesson": lesson.to_dict()}, 201


@bp.get("/get-lessons")
@bp.post("/get-lessons")
@instructor_required
@validate(query=LessonQuery, resp=Response(HTTP_200=LessonListResponse, **errors(401, 403)),
          **AUTH)
def list_lessons():
    """Lessons of the instructor's courses (an admin's: all), by module or course."""
    args = filters(LessonQuery)
    user = current_user()
    query = (db.select(Lesson).join(Module).join(Course)
             .order_by(Module.course_id, Module.position, Lesson.position, Lesson.id))
    if user.role != "admin":
        query = query.where(Course.instructor_id == user.id)
    if args.module_id is not None:
        query = query.where(Lesson.module_id == args.module_id)
    if args.course_id is not None:
        query = query.where(Module.course_id == args.course_id)
    return page_of("lessons", query, args)


@bp.get("/<int:lesson_id>")
@bp.get("/get-lessons/<int:lesson_id>")
@bp.post("/get-lessons/<int:lesson_id>")
@login_required
@validate(resp=Response(HTTP_200=LessonResponse, **errors(401, 404)), **AUTH)
def get_lesson(lesson_id: int):
    """A lesson: full for enrolled students, the owner and admins; otherwise its outline
    (and its content only if it is a preview)."""
    user = current_user()
    lesson = course_service.get_lesson(lesson_id)
    course = course_service.visible_course(course_service.course_of_lesson(lesson).id, user)
    level = course_service.access_level(course, user)
    full = course_service.has_full_content(level)
    data = lesson.to_dict(full_content=full)
    data["resources"] = ([r.to_dict() for r in lesson.resources]
                         if full or lesson.is_preview else [])
    data["course_id"] = course.id
    return {"lesson": data, "access": level}


@bp.put("/<int:lesson_id>")
@bp.put("/update-lessons/<int:lesson_id>")
@instructor_required
@validate(json=LessonUpdate, resp=Response(HTTP_200=LessonSavedResponse, **errors(401, 403, 404)),
          **AUTH)
def update_lesson(lesson_id: int):
    """Change a lesson, move it (`position`), or move it to another module of the course."""
    lesson = course_service.get_lesson(lesson_id)
    course_service.ensure_can_edit(course_service.course_of_lesson(lesson), current_user())
    changes = sent_changes(json_body(), clearable=NULLABLE)
    course_service.update_lesson(lesson, changes)
    db.session.commit()
    return {"message": "Lesson updated", "lesson": lesson.to_dict()}


@bp.delete("/<int:lesson_id>")
@bp.delete("/delete-lessons/<int:lesson_id>")
@instructor_required
@validate(resp=Response(HTTP_200=MessageResponse, **errors(401, 403, 404)), **AUTH)
def delete_lesson(lesson_id: int):
    """Delete a lesson with its resources."""
    lesson = course_service.get_lesson(lesson_id)
    course_service.ensure_can_edit(course_service.course_of_lesson(lesson), current_user())
    removal = course_service.delete_lesson(lesson)
    db.session.commit()
    for path in removal.files:
        file_service.delete(path)
    return {"message": "Lesson deleted"}
