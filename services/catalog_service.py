"""The catalog as the public sees it: published courses, filtered, sorted and searched.

A list is a select of Course with its filters and order; the reader chooses its columns
(`course_service.course_page` reads each course with its instructor and subcategory joined in,
and the count, in one statement, whatever the page's size). Search is full-text on PostgreSQL
(the expression index ix_courses_search, prefix matching on each word) and a LIKE over the same
three fields on SQLite.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import Select, String, and_, bindparam, false, func, literal_column, or_, select

from models import COURSE_SEARCH_VECTOR, Course, Enrollment, MasterCategory, Subcategory, db

SORTS = ("newest", "oldest", "price_asc", "price_desc", "title", "popular")
_WORD = re.compile(r"\w+", re.UNICODE)
# The index's expression with its columns qualified: lists join other tables that also have a
# `description`. PostgreSQL matches the index by the parsed expression, not by its text.
_SEARCH_VECTOR = re.sub(r"COALESCE\((\w+),", r"COALESCE(courses.\1,", COURSE_SEARCH_VECTOR)


def search_words(query: str) -> list[str]:
    return _WORD.findall(query.lower())[:10]


def _search_form(query: str) -> tuple[object, dict]:
    """How `query` is searched (the statement's shape: "none" for a query without words,
    "tsquery" on PostgreSQL, else the number of words LIKE matches) and the values bound."""
    words = search_words(query)
    if not words:
        return "none", {}
    if db.engine.dialect.name == "postgresql":
        return "tsquery", {"search": " & ".join(f"{word}:*" for word in words)}
    return len(words), {
        f"search_{n}": "%" + word.replace("\\", "\\\\").replace("%", "\\%")
        .replace("_", "\\_") + "%" for n, word in enumerate(words)}


def _search_clause(form):
    if form == "none":
        return false()
    if form == "tsquery":
        return literal_column(_SEARCH_VECTOR).op("@@")(
            func.to_tsquery(literal_column("'simple'::regconfig"),
                            bindparam("search", type_=String)))
    return and_(*(or_(*(func.lower(column).like(bindparam(f"search_{n}", type_=String),
                                                escape="\\")
                        for column in (Course.title, Course.short_description,
                                       Course.description)))
                  for n in range(form)))


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


def catalog_shape(*, statuses=("published",), category_id: int | None = None,
                  subcategory_id: int | None = None, search: str | None = None,
                  difficulty: str | None = None, min_price: Decimal | None = None,
                  max_price: Decimal | None = None, language: str | None = None,
                  mode_of_conduct: str | None = None, is_free: bool | None = None,
                  instructor_id: int | None = None, sort: str = "newest") -> CatalogQuery:
    """A catalog query as its shape and values (`CatalogQuery`): the shape says which filters
    it has, `is_free`, how it searches and its sort; the values are those of its bind
    parameters. A list's statement is built once per shape (course_service.catalog_page)."""
    values: dict = {}
    if statuses and len(statuses) == 1:  # the catalog's: one status, a plain comparison
        values["status"] = statuses[0]
    elif statuses:
        values["statuses"] = tuple(statuses)
    for name, value in (("instructor_id", instructor_id), ("subcategory_id", subcategory_id),
                        ("category_id", category_id), ("min_price", min_price),
                        ("max_price", max_price)):
        if value is not None:
            values[name] = value
    if difficulty:
        values["difficulty"] = difficulty
    if language:
        values["language"] = language.lower()
    if mode_of_conduct:
        values["mode_of_conduct"] = mode_of_conduct.upper()
    search_form = None
    if search is not None and search.strip():
        search_form, searched = _search_form(search)
        values.update(searched)
    return CatalogQuery((tuple(values), is_free, search_form, sort), values)


def bound_course_query(shape: tuple) -> Select:
    """The select of Course for a `catalog_shape`, its values as named bind parameters."""
    names, is_free, search_form, sort = shape
    query = select(Course)
    if "status" in names:
        query = query.where(Course.status == bindparam("status"))
    if "statuses" in names:  # an IN of a list renders the statement's SQL again at each run
        query = query.where(Course.status.in_(bindparam("statuses", expanding=True)))
    for name, column in (("instructor_id", Course.instructor_id),
                         ("subcategory_id", Course.subcategory_id),
                         ("difficulty", Course.difficulty),
                         ("mode_of_conduct", Course.mode_of_conduct)):
        if name in names:
            query = query.where(column == bindparam(name))
    if "category_id" in names:
        query = query.where(Course.subcategory_id.in_(
            select(Subcategory.id).where(Subcategory.master_category_id ==
                                         bindparam("category_id"))))
    if "min_price" in names:
        query = query.where(Course.price >= bindparam("min_price"))
    if "max_price" in names:
        query = query.where(Course.price <= bindparam("max_price"))
    if is_free is not None:
        query = query.where(Course.price == 0 if is_free else Course.price > 0)
    if "language" in names:
        query = query.where(func.lower(Course.language) == bindparam("language"))
    if search_form is not None:
        query = query.where(_search_clause(search_form))
    return query.order_by(*_order(sort))


class CatalogQuery(NamedTuple):
    """A catalog list's query: its shape (hashable), the values of its bind parameters, and
    the function that builds a shape's select of Course with its values as bind parameters."""

    shape: tuple
    values: dict
    build: Callable[[tuple], Select] = bound_course_query


def course_query(**filters) -> Select:
    """The select of Course for the catalog's filters (`catalog_shape`'s keywords), with
    their values."""
    shape, values, build = catalog_shape(**filters)
    return build(shape).params(values)


def public_subcategories(master_category_id: int | None = None):
    query = (select(Subcategory).join(MasterCategory)
             .where(Subcategory.is_active.is_(True), MasterCategory.is_active.is_(True))
             .order_by(Subcategory.position, Subcategory.id))
    if master_category_id is not None:
        query = query.where(Subcategory.master_category_id == master_category_id)
    return query
