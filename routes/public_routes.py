"""The public catalog: no authentication, rate limited per client address."""
from __future__ import annotations

from flask import Blueprint
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import optional_user
from services import catalog_service, category_service, course_service
from utils.errors import NotFound
from utils.pagination import page_of, paginate
from utils.pipeline.catalog_cache import cached_public, guest_read
from utils.pipeline.rate_limits import config_limit
from utils.read_only import read_only
from utils.responses import (
    CourseListResponse,
    CourseResponse,
    MasterCategoryOut,
    PaginationOut,
    SubcategoryListResponse,
    SubcategoryOut,
)
from utils.schemas import CourseListQuery
from utils.validation import PageQuery, StrictModel, errors, json_body, query_args, validate

bp = Blueprint("public", __name__)
TAGS = {"tags": ["public"]}


class PublicSubcategoryQuery(PageQuery):
    master_category_id: int | None = Field(None, ge=1)
    category_id: int | None = Field(None, ge=1, description="alias of master_category_id")


class SearchQuery(PageQuery):
    q: str = Field(min_length=1, max_length=200)


class SearchIn(StrictModel):
    query: str = Field(min_length=1, max_length=200)
    page: int = Field(1, ge=1, le=100_000)
    per_page: int = Field(20, ge=1)


class CategoryListResponse(TypedDict):
    """A page of active master categories, in display order."""

    categories: list[MasterCategoryOut]
    pagination: PaginationOut


class CategorySubcategoriesResponse(SubcategoryListResponse):
    """A master category and a page of its active subcategories."""

    category: MasterCategoryOut


class SubcategoryCoursesResponse(CourseListResponse):
    """A subcategory and a page of its published courses."""

    subcategory: SubcategoryOut


class CourseSearchResponse(CourseListResponse):
    """A page of published courses matching the search."""

    query: str


def _active_master(category_id: int):
    category = category_service.get_master(category_id)
    if not category.is_active:
        raise NotFound("Master category not found")
    return category


@bp.get("/categories")
@bp.get("/get-categories")
@config_limit("RATE_LIMIT_PUBLIC")
@cached_public
@validate(query=PageQuery, resp=Response(HTTP_200=CategoryListResponse, **errors(429)), **TAGS)
@read_only
def categories():
    """Active master categories, in display order."""
    args = query_args()
    return page_of("categories", category_service.list_masters(active_only=True), args)


@bp.get("/categories/<int:category_id>/subcategories")
@config_limit("RATE_LIMIT_PUBLIC")
@cached_public
@validate(query=PageQuery, resp=Response(HTTP_200=CategorySubcategoriesResponse,
                                         **errors(404, 429)), **TAGS)
@read_only
def category_subcategories(category_id: int):
    """Active subcategories of a master category."""
    args = query_args()
    category = _active_master(category_id)
    rows, meta = paginate(catalog_service.public_subcategories(category.id), args.page,
                          args.per_page)
    return {"category": category.to_dict(), "subcategories": [row.to_dict() for row in rows],
            "pagination": meta}


@bp.get("/get-subcategories")
@config_limit("RATE_LIMIT_PUBLIC")
@cached_public
@validate(query=PublicSubcategoryQuery, resp=Response(HTTP_200=SubcategoryListResponse,
                                                      **errors(429)), **TAGS)
@read_only
def subcategories():
    """Active subcategories, optionally of one master category."""
    args = query_args()
    rows, meta = paginate(
        catalog_service.public_subcategories(args.master_category_id or args.category_id),
        args.page, args.per_page)
    return {"subcategories": [row.to_dict() for row in rows], "pagination": meta}


@bp.get("/subcategories/<int:subcategory_id>/courses")
@config_limit("RATE_LIMIT_PUBLIC")
@cached_public
@validate(query=CourseListQuery, resp=Response(HTTP_200=SubcategoryCoursesResponse,
                                               **errors(404, 429)), **TAGS)
@read_only
def subcategory_courses(subcategory_id: int):
    """Published courses of a subcategory (same filters and sorts as get-courses)."""
    args = query_args()
    sub = category_service.get_sub(subcategory_id)
    if not sub.is_active:
        raise NotFound("Subcategory not found")
    filters = args.filters()
    filters["subcategory_id"] = sub.id
    return {"subcategory": sub.to_dict(),
            **course_service.catalog_page(catalog_service.catalog_shape(**filters), args.page,
                                          args.per_page)}


def _courses(_viewer, args) -> dict:
    return course_service.catalog_page(catalog_service.catalog_shape(**args.filters()),
                                       args.page, args.per_page)


@bp.get("/get-courses")
@guest_read(_courses)  # a guest's page no current copy holds: the catalog fast path's
@config_limit("RATE_LIMIT_PUBLIC")
@cached_public
@validate(query=CourseListQuery, resp=Response(HTTP_200=CourseListResponse, **errors(429)), **TAGS)
@read_only
def courses():
    """Published courses: `category_id`, `subcategory_id`, `search`, `difficulty`,
    `min_price`, `max_price`, `is_free`, `language`, `mode_of_conduct`, `sort`."""
    return _courses(None, query_args())


def _course(viewer, _args, course_id: int) -> dict:
    course = course_service.course_card(course_id, viewer, with_outline=True)
    if course.status != "published":
        raise NotFound("Course not found")
    return {"course": course_service.course_detail(course, viewer)}


@bp.get("/courses/<int:course_id>")
@bp.get("/get-courses/<int:course_id>")
@guest_read(_course)
@config_limit("RATE_LIMIT_PUBLIC")
@cached_public
@validate(resp=Response(HTTP_200=CourseResponse, **errors(404, 429)), **TAGS)
@read_only
def course(course_id: int):
    """A published course with its outline (no video URLs or lesson bodies, except previews,
    unless the caller is enrolled, the owner or an admin)."""
    return _course(optional_user(), None, course_id)


def _search(text: str, page: int, per_page: int):
    per_page = min(per_page, 100)
    query = catalog_service.catalog_shape(search=text, sort="newest")
    return {"query": text, **course_service.catalog_page(query, page, per_page)}


def _searched(_viewer, args) -> dict:
    return _search(args.q, args.page, args.per_page)


@bp.get("/courses/search")
@guest_read(_searched)
@config_limit("RATE_LIMIT_SEARCH")
@cached_public
@validate(query=SearchQuery, resp=Response(HTTP_200=CourseSearchResponse, **errors(429)), **TAGS)
@read_only
def search():
    """Search published courses by title, short description and description (`q`)."""
    return _searched(None, query_args())


@bp.post("/search")
@config_limit("RATE_LIMIT_SEARCH")
@validate(json=SearchIn, resp=Response(HTTP_200=CourseSearchResponse, **errors(429)), **TAGS)
def search_by_post():
    """The API documentation's search: `{"query": "..."}`."""
    body = json_body()
    return _search(body.query, body.page, body.per_page)
