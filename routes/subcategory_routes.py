"""Subcategories (admin). The public reads them through /public."""
from __future__ import annotations

from flask import Blueprint
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import admin_required
from models import Subcategory, db
from services import category_service
from utils.pagination import page_of
from utils.responses import MessageResponse, SubcategoryListResponse, SubcategoryOut
from utils.routing import sent_changes
from utils.validation import PageQuery, StrictModel, errors, filters, json_body, validate
from utils.validators import SafeText

bp = Blueprint("subcategories", __name__)
ADMIN = {"tags": ["categories"], "security": {"bearer": []}}


class SubcategoryIn(StrictModel):
    master_category_id: int = Field(ge=1)
    name: SafeText = Field(min_length=1, max_length=120)
    description: SafeText | None = Field(None, max_length=5000)
    position: int = Field(0, ge=0, le=100_000)
    is_active: bool = True


class SubcategoryUpdate(StrictModel):
    master_category_id: int | None = Field(None, ge=1)
    name: SafeText | None = Field(None, min_length=1, max_length=120)
    description: SafeText | None = Field(None, max_length=5000)
    position: int | None = Field(None, ge=0, le=100_000)
    is_active: bool | None = None


class AdminSubcategoryQuery(PageQuery):
    master_category_id: int | None = Field(None, ge=1)
    is_active: bool | None = None


class SubcategorySavedResponse(TypedDict):
    """A subcategory after a change."""

    message: str
    subcategory: SubcategoryOut


class SubcategoryResponse(TypedDict):
    """A subcategory."""

    subcategory: SubcategoryOut


@bp.get("")
@bp.get("/get-subcategories")
@bp.post("/get-subcategories")
@admin_required
@validate(query=AdminSubcategoryQuery, resp=Response(HTTP_200=SubcategoryListResponse,
                                                     **errors(401, 403)), **ADMIN)
def list_subcategories():
    """All subcategories, optionally of one master category."""
    args = filters(AdminSubcategoryQuery)
    query = category_service.list_subs(master_category_id=args.master_category_id)
    if args.is_active is not None:
        query = query.where(Subcategory.is_active.is_(args.is_active))
    return page_of("subcategories", query, args)


@bp.post("")
@bp.post("/create-subcategories")
@admin_required
@validate(json=SubcategoryIn, resp=Response(HTTP_201=SubcategorySavedResponse,
                                            **errors(401, 403, 409)), **ADMIN)
def create_subcategory():
    """Create a subcategory of a master category (names unique within it)."""
    sub = category_service.create_sub(**json_body().model_dump())
    db.session.commit()
    return {"message": "Subcategory created", "subcategory": sub.to_dict()}, 201


@bp.get("/<int:subcategory_id>")
@bp.get("/get-subcategories/<int:subcategory_id>")
@bp.post("/get-subcategories/<int:subcategory_id>")
@admin_required
@validate(resp=Response(HTTP_200=SubcategoryResponse, **errors(401, 403, 404)), **ADMIN)
def get_subcategory(subcategory_id: int):
    """A subcategory, active or not."""
    return {"subcategory": category_service.get_sub(subcategory_id).to_dict()}


@bp.put("/<int:subcategory_id>")
@bp.put("/update-subcategories/<int:subcategory_id>")
@admin_required
@validate(json=SubcategoryUpdate, resp=Response(HTTP_200=SubcategorySavedResponse,
                                                **errors(401, 403, 404, 409)), **ADMIN)
def update_subcategory(subcategory_id: int):
    """Change a subcategory, or move it to another master category."""
    sub = category_service.get_sub(subcategory_id)
    changes = sent_changes(json_body(), clearable=("description",))
    category_service.update_sub(sub, changes)
    db.session.commit()
    return {"message": "Subcategory updated", "subcategory": sub.to_dict()}


@bp.delete("/<int:subcategory_id>")
@bp.delete("/delete-subcategories/<int:subcategory_id>")
@admin_required
@validate(resp=Response(HTTP_200=MessageResponse, **errors(401, 403, 404, 409)), **ADMIN)
def delete_subcategory(subcategory_id: int):
    """Delete a subcategory without courses (409 while it has some)."""
    category_service.delete_sub(category_service.get_sub(subcategory_id))
    db.session.commit()
    return {"message": "Subcategory deleted"}
