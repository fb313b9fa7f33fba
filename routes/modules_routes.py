"""Modules under /modules (the API documentation's paths) and their RESTful forms."""
from __future__ import annotations

from flask import Blueprint
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import current_user, instructor_required, login_required
from models import Course, Module, db
from services import course_service
from utils.pagination import page_of
from utils.responses import (
    Access,
    LessonListSavedResponse,
    MessageResponse,
    ModuleOut,
    ModuleSavedResponse,
    OutlineModuleOut,
    PaginationOut,
)
from utils.routing import alias, sent_changes
from utils.validation import IdList, PageQuery, StrictModel, errors, filters, json_body, validate

bp = Blueprint("modules", __name__)
AUTH = {"tags": ["modules"], "security": {"bearer": []}}

alias(bp, "/create-modules/<int:course_id>", "courses.create_module", methods=["POST"])


class ModuleUpdate(StrictModel):
    title: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    position: int | None = Field(None, ge=0, le=10_000)


class ModuleQuery(PageQuery):
    course_id: int | None = Field(None, ge=1)


class ModuleListResponse(TypedDict):
    """A page of modules, by course and position."""

    modules: list[ModuleOut]
    pagination: PaginationOut


class ModuleResponse(TypedDict):
    """A module with its lessons, as the reader may see them."""

    module: OutlineModuleOut
    access: Access


@bp.get("/get-modules")
@bp.post("/get-modules")
@instructor_required
@validate(query=ModuleQuery, resp=Response(HTTP_200=ModuleListResponse, **errors(401, 403)),
          **AUTH)
def list_modules():
    """Modules of the instructor's courses (an admin's: all), optionally of one course."""
    args = filters(ModuleQuery)
    user = current_user()
    query = (db.select(Module).join(Course)
             .order_by(Module.course_id, Module.position, Module.id))
    if user.role != "admin":
        query = query.where(Course.instructor_id == user.id)
    if args.course_id is not None:
        query = query.where(Module.course_id == args.course_id)
    return page_of("modules", query, args)


@bp.get("/<int:module_id>")
@bp.get("/get-modules/<int:module_id>")
@bp.post("/get-modules/<int:module_id>")
@login_required
@validate(resp=Response(HTTP_200=ModuleResponse, **errors(401, 404)), **AUTH)
def get_module(module_id: int):
    """A module with its lessons, restricted as for the course detail."""
    user = current_user()
    module = course_service.get_module(module_id)
    course = course_service.visible_course(module.course_id, user)
    level, modules, outline = course_service.readable_outline(course, user)
    data = next(entry for read, entry in zip(modules, outline) if read.id == module.id)
    return {"module": data, "access": level}


@bp.put("/<int:module_id>")
@bp.put("/update-modules/<int:module_id>")
@instructor_required
@validate(json=ModuleUpdate, resp=Response(HTTP_200=ModuleSavedResponse, **errors(401, 403, 404)),
          **AUTH)
def update_module(module_id: int):
    """Rename or move a module (`position` renumbers its siblings)."""
    module = course_service.get_module(module_id)
    course_service.editable_course(module.course_id, current_user())
    changes = sent_changes(json_body(), clearable=("description",))
    course_service.update_module(module, changes)
    db.session.commit()
    return {"message": "Module updated", "module": module.to_dict()}


@bp.delete("/<int:module_id>")
@bp.delete("/delete-modules/<int:module_id>")
@instructor_required
@validate(resp=Response(HTTP_200=MessageResponse, **errors(401, 403, 404, 409)), **AUTH)
def delete_module(module_id: int):
    """Delete an empty module (409 while it has lessons)."""
    module = course_service.get_module(module_id)
    course_service.editable_course(module.course_id, current_user())
    course_service.delete_module(module)
    db.session.commit()
    return {"message": "Module deleted"}


@bp.put("/<int:module_id>/lessons/reorder")
@instructor_required
@validate(json=IdList, resp=Response(HTTP_200=LessonListSavedResponse, **errors(401, 403, 404)),
          **AUTH)
def reorder_lessons(module_id: int):
    """Set the order of all the module's lessons: `{"ids": [lesson ids in order]}`."""
    module = course_service.get_module(module_id)
    course_service.editable_course(module.course_id, current_user())
    lessons = course_service.reorder_lessons(module, json_body().ids)
    db.session.commit()
    return {"message": "Lessons reordered", "lessons": [item.to_dict() for item in lessons]}
