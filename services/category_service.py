"""Master categories and subcategories: admins write, everyone reads through /public."""
from __future__ import annotations

from sqlalchemy import func, select

from models import Course, MasterCategory, Subcategory, db
from utils.errors import Conflict, NotFound, ValidationError
from utils.validators import slugify


def _unique_slug(model, base: str, exclude_id: int | None = None) -> str:
    slug, n = base, 1
    while True:
        query = select(model.id).where(model.slug == slug)
        if exclude_id is not None:
            query = query.where(model.id != exclude_id)
        if db.session.scalar(query) is None:
            return slug
        n += 1
        slug = f"{base}-{n}"


def get_master(category_id: int) -> MasterCategory:
    category = db.session.get(MasterCategory, category_id)
    if category is None:
        raise NotFound("Master category not found")
    return category


def get_sub(subcategory_id: int) -> Subcategory:
    sub = db.session.get(Subcategory, subcategory_id)
    if sub is None:
        raise NotFound("Subcategory not found")
    return sub


def _name_taken(query, name: str) -> bool:
    """Names are unique case-insensitively in every script. Compared in Python: SQLite's
    lower() folds ASCII only. (Names under one parent are few.)"""
    wanted = name.casefold()
    return any(existing.casefold() == wanted for existing in db.session.scalars(query))


def _ensure_master_name_free(name: str, exclude_id: int | None = None) -> None:
    query = select(MasterCategory.name)
    if exclude_id is not None:
        query = query.where(MasterCategory.id != exclude_id)
    if _name_taken(query, name):
        raise Conflict("A master category with this name already exists",
                       details={"name": "already exists"})


def create_master(*, name: str, **fields) -> MasterCategory:
    _ensure_master_name_free(name)
    category = MasterCategory(name=name, slug=_unique_slug(MasterCategory, slugify(name)), **fields)
    db.session.add(category)
    db.session.flush()
    return category


def update_master(category: MasterCategory, changes: dict) -> MasterCategory:
    if "name" in changes and changes["name"] != category.name:
        _ensure_master_name_free(changes["name"], category.id)
        category.slug = _unique_slug(MasterCategory, slugify(changes["name"]), category.id)
    for field, value in changes.items():
        setattr(category, field, value)
    return category


def delete_master(category: MasterCategory) -> None:
    children = db.session.scalar(select(func.count()).select_from(Subcategory)
                                 .where(Subcategory.master_category_id == category.id))
    if children:
        raise Conflict(f"This category still has {children} subcategor"
                       f"{'y' if children == 1 else 'ies'}; delete or move them first",
                       code="has_children", details={"subcategories": children})
    db.session.delete(category)


def _ensure_sub_name_free(master_id: int, name: str, exclude_id: int | None = None) -> None:
    query = select(Subcategory.name).where(Subcategory.master_category_id == master_id)
    if exclude_id is not None:
        query = query.where(Subcategory.id != exclude_id)
    if _name_taken(query, name):
        raise Conflict("This category already has a subcategory with this name",
                       details={"name": "already exists"})


def _existing_master(master_id: int) -> None:
    if db.session.get(MasterCategory, master_id) is None:
        raise ValidationError("The master category does not exist",
                              details={"master_category_id": "does not exist"})


def create_sub(*, master_category_id: int, name: str, **fields) -> Subcategory:
    _existing_master(master_category_id)
    _ensure_sub_name_free(master_category_id, name)
    sub = Subcategory(master_category_id=master_category_id, name=name,
                      slug=_unique_slug(Subcategory, slugify(name)), **fields)
    db.session.add(sub)
    db.session.flush()
    return sub


def update_sub(sub: Subcategory, changes: dict) -> Subcategory:
    master_id = changes.get("master_category_id", sub.master_category_id)
    if master_id != sub.master_category_id:
        _existing_master(master_id)
    name = changes.get("name", sub.name)
    if name != sub.name or master_id != sub.master_category_id:
        _ensure_sub_name_free(master_id, name, sub.id)
    if "name" in changes and changes["name"] != sub.name:
        sub.slug = _unique_slug(Subcategory, slugify(changes["name"]), sub.id)
    for field, value in changes.items():
        setattr(sub, field, value)
    return sub


def delete_sub(sub: Subcategory) -> None:
    courses = db.session.scalar(select(func.count()).select_from(Course)
                                .where(Course.subcategory_id == sub.id))
    if courses:
        raise Conflict(f"This subcategory still has {courses} course"
                       f"{'' if courses == 1 else 's'}; move or delete them first",
                       code="has_children", details={"courses": courses})
    db.session.delete(sub)


def list_masters(*, active_only: bool = False):
    query = select(MasterCategory).order_by(MasterCategory.position, MasterCategory.id)
    if active_only:
        query = query.where(MasterCategory.is_active.is_(True))
    return query


def list_subs(*, master_category_id: int | None = None, active_only: bool = False):
    query = select(Subcategory).order_by(Subcategory.position, Subcategory.id)
    if master_category_id is not None:
        query = query.where(Subcategory.master_category_id == master_category_id)
    if active_only:
        query = query.join(MasterCategory).where(Subcategory.is_active.is_(True),
                                                 MasterCategory.is_active.is_(True))
    return query
