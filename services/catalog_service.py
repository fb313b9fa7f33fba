"""The catalog as the public sees it: published courses, filtered, sorted and searched.

A list is a select of Course with its filters and order; the reader chooses its columns
(`course_service.course_page` reads each course with its instructor and subcategory joined in,
and the count, in one statement, whatever the page's size). Search is full-text on PostgreSQL
(the expression index ix_courses_search, prefix matching on each word) and a LIKE over the same
three fields on SQLite.
"""
from __future__ import annotations

import re
from decimal import Decimal

from sqlalchemy import and_, false, func, literal_column, or_, select

from models import COURSE_SEARCH_VECTOR, Course, Enrollment, MasterCategory, Subcategory, db

SORTS = ("newest", "oldest", "price_asc", "price_desc", "title", "popular")
_WORD = re.compile(r"\w+", re.UNICODE)
# The index's expression with its columns qualified: lists join other tables that also have a
# `description`. PostgreSQL matches the index by the parsed expression, not by its text.
_SEARCH_VECTOR = re.sub(r"COALESCE\((\w+),", r"COALESCE(courses.\1,", COURSE_SEARCH_VECTOR)


def search_words(query: str) -> list[str]:
    return _WORD.findall(query.lower())[:10]


def search_condition(query: str):
    """A WHERE clause matching every word of `query` in the title or descriptions; a query
    without any word (only punctuation) matches nothing."""
    words = search_words(query)
    if not words:
        return false()
    if db.engine.dialect.name == "postgresql":
        tsquery = " & ".join(f"{word}:*" for word in words)
        return literal_column(_SEARCH_VECTOR).op("@@")(
            func.to_tsquery(literal_column("'simple'::regconfig"), tsquery))
    clauses = []
    for word in words:
        pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        clauses.append(or_(*(func.lower(column).like(pattern, escape="\\") for column in
                             (Course.title, Course.short_description, Course.description))))
    return and_(*clauses)


def _order(sort: str):
    if sort == "oldest":
        return (Course.created_at.asc(), Course.id.asc())
    if sort == "price_asc":
        return (Course.price.asc(), Course.id.asc())
    if sort == "price_desc":
        return (Course.price.desc(), Course.id.desc())
    if sort == "title":
        return (func.lower(Course.title).asc(), Course.id.asc())
    if sort == "popular":
        enrolled = (select(func.count(Enrollment.id)).where(Enrollment.course_id == Course.id)
                    .correlate(Course).scalar_subquery())
        return (enrolled.desc(), Course.id.desc())
    return (Course.created_at.desc(), Course.id.desc())


def teaching_query(user, status: str | None, filters: dict):
    """The courses an instructor teaches, in every status (`status` narrows it; an admin's
    query covers every course)."""
    return course_query(statuses=(status,) if status else None,
                        instructor_id=None if user.role == "admin" else user.id, **filters)


def course_query(*, statuses=("published",), category_id: int | None = None,
                 subcategory_id: int | None = None, search: str | None = None,
                 difficulty: str | None = None, min_price: Decimal | None = None,
                 max_price: Decimal | None = None, language: str | None = None,
                 mode_of_conduct: str | None = None, is_free: bool | None = None,
                 instructor_id: int | None = None, sort: str = "newest"):
    query = select(Course)
    if statuses:
        query = query.where(Course.status.in_(statuses))
    if instructor_id is not None:
        query = query.where(Course.instructor_id == instructor_id)
    if subcategory_id is not None:
        query = query.where(Course.subcategory_id == subcategory_id)
    if category_id is not None:
        query = query.where(Course.subcategory_id.in_(
            select(Subcategory.id).where(Subcategory.master_category_id == category_id)))
    if difficulty:
        query = query.where(Course.difficulty == difficulty)
    if min_price is not None:
        query = query.where(Course.price >= min_price)
    if max_price is not None:
        query = query.where(Course.price <= max_price)
    if is_free is not None:
        query = query.where(Course.price == 0 if is_free else Course.price > 0)
    if language:
        query = query.where(func.lower(Course.language) == language.lower())
    if mode_of_conduct:
        query = query.where(Course.mode_of_conduct == mode_of_conduct.upper())
    if search is not None and search.strip():
        query = query.where(search_condition(search))
    return query.order_by(*_order(sort))


def public_subcategories(master_category_id: int | None = None):
    query = (select(Subcategory).join(MasterCategory)
             .where(Subcategory.is_active.is_(True), MasterCategory.is_active.is_(True))
             .order_by(Subcategory.position, Subcategory.id))
    if master_category_id is not None:
        query = query.where(Subcategory.master_category_id == master_category_id)
    return query
