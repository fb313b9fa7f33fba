"""Master categories (admin). The public reads them through /public/categories."""
from __future__ import annotations

from flask import Blueprint
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import admin_required
from models import MasterCategory, db
from services import category_service
from utils.pagination import page_of
from utils.responses import MasterCategoryOut, MessageResponse, PaginationOut, SubcategoryOut
from utils.routing import sent_changes
from utils.validation import PageQuery, StrictModel, errors, filters, json_body, validate
from utils.validators import SafeText, Url

bp = Blueprint("master_categories", __name__)
ADMIN = {"tags": ["categories"], "security": {"bearer": []}}


class MasterCategoryIn(StrictModel):
    name: SafeText = Field(min_length=1, max_length=120)
    description: SafeText | None = Field(None, max_length=5000)
    icon_url: Url | None = None
    position: int = Field(0, ge=0, le=100_000)
    is_active: bool = True


class MasterCategoryUpdate(StrictModel):
    name: SafeText | None = Field(None, min_length=1, max_length=120)
    description: SafeText | None = Field(None, max_length=5000)
    icon_url: Url | None = None
    position: int | None = Field(None, ge=0, le=100_000)
    is_active: bool | None = None


class MasterCategoryQuery(PageQuery):
    is_active: bool | None = None


class MasterCategoryListResponse(TypedDict):
    """A page of master categories, in display order."""

    master_categories: list[MasterCategoryOut]
    pagination: PaginationOut


class MasterCategorySavedResponse(TypedDict):
    """A master category after a change."""

    message: str
    master_category: MasterCategoryOut


class MasterCategoryDetailOut(MasterCategoryOut):
    """A master category with its subcategories."""

    subcategories: list[SubcategoryOut]


class MasterCategoryResponse(TypedDict):
    """A master category with its subcategories."""

    master_category: MasterCategoryDetailOut


@bp.get("")
@bp.get("/get-mastercategories")
@bp.post("/get-mastercategories")
@admin_required
@validate(query=MasterCategoryQuery, resp=Response(HTTP_200=MasterCategoryListResponse,
                                                         **errors(401, 403)), **ADMIN)
def list_master_categories():
    """All master categories, active and inactive, in display order."""
    args = filters(MasterCategoryQuery)
    query = category_service.list_masters()
    if args.is_active is not None:
        query = query.where(MasterCategory.is_active.is_(args.is_active))
    return page_of("master_categories", query, args)


@bp.post("")
@bp.post("/create-mastercategories")
@admin_required
@validate(json=MasterCategoryIn, resp=Response(HTTP_201=MasterCategorySavedResponse,
                                               **errors(401, 403, 409)), **ADMIN)
def create_master_category():
    """Create a master category (names are unique, case-insensitively)."""
    category = category_service.create_master(**json_body().model_dump())
    db.session.commit()
    return {"message": "Master category created", "master_category": category.to_dict()}, 201


@bp.get("/<int:category_id>")
@bp.get("/get-mastercategories/<int:category_id>")
@bp.post("/get-mastercategories/<int:category_id>")
@admin_required
@validate(resp=Response(HTTP_200=MasterCategoryResponse, **errors(401, 403, 404)), **ADMIN)
def get_master_category(category_id: int):
    """One master category with its subcategories."""
    category = category_service.get_master(category_id)
    data = category.to_dict()
    data["subcategories"] = [sub.to_dict() for sub in category.subcategories]
    return {"master_category": data}


@bp.put("/<int:category_id>")
@bp.put("/update-mastercategories/<int:category_id>")
@admin_required
@validate(json=MasterCategoryUpdate, resp=Response(HTTP_200=MasterCategorySavedResponse,
                                                   **errors(401, 403, 404, 409)), **ADMIN)
def update_master_category(category_id: int):
    """Change a master category (names stay unique)."""
    category = category_service.get_master(category_id)
    category_service.update_master(
        category, sent_changes(json_body(), clearable=("description", "icon_url")))
    db.session.commit()
    return {"message": "Master category updated", "master_category": category.to_dict()}


@bp.delete("/<int:category_id>")
@bp.delete("/delete-mastercategories/<int:category_id>")
@admin_required
@validate(resp=Response(HTTP_200=MessageResponse, **errors(401, 403, 404, 409)), **ADMIN)
def delete_master_category(category_id: int):
    """Delete an empty master category (409 while it has subcategories)."""
    category_service.delete_master(category_service.get_master(category_id))
    db.session.commit()
    return {"message": "Master category deleted"}
