"""Courses: the published catalog, instructors' own courses, and writing a course."""
from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from flask import Blueprint, request
from pydantic import AfterValidator, BeforeValidator, Field
from spectree import Response
from typing_extensions import NotRequired, TypedDict

from auth import current_user, instructor_required, optional_user
from models import COURSE_STATUSES, DIFFICULTIES, ENROLLMENT_STATUSES, db
from services import catalog_service, course_service, enrollment_service, file_service
from utils.extensions import limiter
from utils.pagination import paginate
from utils.pipeline.catalog_cache import cached_public
from utils.pipeline.signed_in_fast_path import signed_in_read
from utils.read_only import read_only
from utils.responses import (
    Access,
    CourseListResponse,
    CourseResponse,
    CourseSavedResponse,
    EnrollmentProgressOut,
    MessageResponse,
    ModuleListSavedResponse,
    ModuleSavedResponse,
    OutlineModuleOut,
    PaginationOut,
    PrerequisiteListResponse,
    PrerequisitesSavedResponse,
)
from utils.routing import sent_changes
from utils.schemas import CourseListQuery, Mode, TeachingQuery
from utils.validation import (
    IdList,
    PageQuery,
    StrictModel,
    UploadFile,
    document,
    errors,
    json_body,
    query_args,
    validate,
)
from utils.validators import Url

bp = Blueprint("courses", __name__)
TAGS = {"tags": ["courses"]}
AUTH = {"tags": ["courses"], "security": {"bearer": []}}

# ISO 4217 codes in use.
ISO_4217 = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN
BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS
GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW
KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD
NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD
SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES
VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWG
""".split())


def _currency(value: str) -> str:
    if value not in ISO_4217:
        raise ValueError("must be an ISO 4217 currency code such as USD, EUR or INR")
    return value


Currency = Annotated[str, BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v),
                     Field(min_length=3, max_length=3), AfterValidator(_currency)]
Price = Annotated[Decimal, Field(ge=0, le=Decimal("99999999.99"), decimal_places=2)]
Hours = Annotated[Decimal, Field(ge=0, le=10000, decimal_places=2)]
Outcome = Annotated[str, Field(min_length=1, max_length=300)]
Slug = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")]


class CourseIn(StrictModel):
    title: str = Field(min_length=1, max_length=200)
    slug: Slug | None = None
    short_description: str | None = Field(None, max_length=500)
    description: str | None = Field(None, max_length=50_000)
    price: Price = Decimal("0.00")
    currency: Currency = "USD"
    difficulty: Literal[DIFFICULTIES] = "beginner"
    duration_hours: Hours | None = None
    learning_outcomes: list[Outcome] = Field(default_factory=list, max_length=50)
    language: str = Field("English", min_length=1, max_length=50)
    mode_of_conduct: Mode = "ONLINE"
    subcategory_id: int | None = Field(None, ge=1)
    thumbnail_url: Url | None = None
    instructor_id: int | None = Field(None, ge=1, description="admins only: create for someone")


class CourseUpdate(StrictModel):
    title: str | None = Field(None, min_length=1, max_length=200)
    slug: Slug | None = None
    short_description: str | None = Field(None, max_length=500)
    description: str | None = Field(None, max_length=50_000)
    price: Price | None = None
    currency: Currency | None = None
    difficulty: Literal[DIFFICULTIES] | None = None
    duration_hours: Hours | None = None
    learning_outcomes: list[Outcome] | None = Field(None, max_length=50)
    language: str | None = Field(None, min_length=1, max_length=50)
    mode_of_conduct: Mode | None = None
    subcategory_id: int | None = Field(None, ge=1)
    thumbnail_url: Url | None = None
    status: Literal[COURSE_STATUSES] | None = None
    instructor_id: int | None = Field(None, ge=1)


NULLABLE_COURSE_FIELDS = {"short_description", "description", "duration_hours", "subcategory_id",
                          "thumbnail_url"}


class ModuleIn(StrictModel):
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    position: int | None = Field(None, ge=0, le=10_000)


class PrerequisitesIn(StrictModel):
    prerequisite_course_ids: list[int] = Field(max_length=100)


class ThumbnailForm(StrictModel):
    """A course's cover image."""

    file: UploadFile = Field(description="png, jpg, jpeg, gif or webp (the field `thumbnail` "
                                         "is read too)")


class CourseDeletedResponse(TypedDict):
    """The course is gone, or archived when students' records refer to it."""

    message: str
    status: NotRequired[Literal["archived"]]


class CourseOutlineResponse(TypedDict):
    """A course's modules and lessons, as the reader may see them."""

    course_id: int
    access: Access
    modules: list[OutlineModuleOut]


class StudentOut(TypedDict):
    """The student of an enrollment, for the course's instructor."""

    id: int
    full_name: str
    email: str


class StudentEnrollmentOut(EnrollmentProgressOut):
    """An enrollment of the course and its student."""

    student: StudentOut


class CourseEnrollmentListResponse(TypedDict):
    """A page of the course's enrollments, newest first."""

    enrollments: list[StudentEnrollmentOut]
    pagination: PaginationOut


# --- the published catalog --------------------------------------------------------------------

@bp.get("")
@cached_public
@validate(query=CourseListQuery, resp=Response(HTTP_200=CourseListResponse), **TAGS)
@read_only
def list_courses():
    """Published courses, with the same filters and sorts as /public/get-courses."""
    args = query_args()
    return course_service.catalog_page(catalog_service.catalog_shape(**args.filters()),
                                       args.page, args.per_page)


def _course(viewer, _args, course_id: int) -> dict:
    course = course_service.visible_card(course_id, viewer)
    return {"course": course_service.course_detail(course, viewer)}


@bp.get("/<int:course_id>")
@signed_in_read(_course)  # a signed-in viewer's page; a guest's is the catalog fast path's
@cached_public
@validate(resp=Response(HTTP_200=CourseResponse, **errors(404)), **TAGS)
@read_only
def get_course(course_id: int):
    """A course with its outline: full content for enrolled students, the owner and admins;
    titles, durations and preview lessons for everyone else."""
    return _course(optional_user(), None, course_id)


# --- instructors' own courses -----------------------------------------------------------------


@bp.get("/get-courses")
@instructor_required
@validate(query=TeachingQuery, resp=Response(HTTP_200=CourseListResponse, **errors(401, 403)),
          **AUTH)
def list_teaching_courses():
    """The instructor's own courses in every status (an admin sees every course)."""
    args = query_args()
    query = catalog_service.teaching_query(current_user(), args.status, args.filters())
    return course_service.course_page(query, args.page, args.per_page)


@bp.get("/get-courses/<int:course_id>")
@instructor_required
@validate(resp=Response(HTTP_200=CourseResponse, **errors(401, 403, 404)), **AUTH)
def get_teaching_course(course_id: int):
    """One of the instructor's own courses, in any status, with its full content."""
    user = current_user()
    course = course_service.editable_card(course_id, user)
    return {"course": course_service.course_detail(course, user)}


@bp.post("")
@bp.post("/create-courses")
@instructor_required
@validate(json=CourseIn, resp=Response(HTTP_201=CourseSavedResponse, **errors(401, 403)), **AUTH)
def create_course():
    """Create a course; it starts as a draft."""
    course = course_service.create_course(current_user(), json_body().model_dump())
    db.session.commit()
    return {"message": "Course created", "course": course.to_dict()}, 201


@bp.put("/<int:course_id>")
@bp.put("/update-courses/<int:course_id>")
@instructor_required
@validate(json=CourseUpdate, resp=Response(HTTP_200=CourseSavedResponse, **errors(401, 403, 404)),
          **AUTH)
def update_course(course_id: int):
    """Change a course (its instructor or an admin); publishing needs at least one lesson."""
    user = current_user()
    course = course_service.editable_course(course_id, user)
    changes = sent_changes(json_body(), clearable=NULLABLE_COURSE_FIELDS)
    course_service.update_course(course, changes, user)
    db.session.commit()
    return {"message": "Course updated", "course": course.to_dict()}


@bp.delete("/<int:course_id>")
@bp.delete("/delete-courses/<int:course_id>")
@instructor_required
@validate(resp=Response(HTTP_200=CourseDeletedResponse, **errors(401, 403, 404)), **AUTH)
def delete_course(course_id: int):
    """Delete a course nobody took; a course with enrollments, payments or certificates is
    archived instead, so students keep their records."""
    course = course_service.editable_course(course_id, current_user())
    removal = course_service.delete_course(course)
    db.session.commit()
    for path in removal.files:
        file_service.delete(path)
    if removal.outcome == "archived":
        return {"message": "The course has student records, so it was archived instead of deleted",
                "status": "archived"}
    return {"message": "Course deleted"}


@bp.post("/<int:course_id>/submit-review")
@instructor_required
@validate(resp=Response(HTTP_200=CourseSavedResponse, **errors(401, 403, 404, 409)), **AUTH)
def submit_for_review(course_id: int):
    """Ask the admins to review and publish a draft (it stays a draft, `awaiting_review`)."""
    course = course_service.editable_course(course_id, current_user())
    course_service.request_review(course)
    db.session.commit()
    return {"message": "Submitted for review: the course awaits an administrator's review",
            "course": course.to_dict()}


@bp.post("/<int:course_id>/thumbnail")
@limiter.limit("20 per hour")
@instructor_required
@document(form=ThumbnailForm, resp=Response(HTTP_200=CourseSavedResponse,
                                            **errors(401, 403, 404, 413, 415, 422)),
          tags=["courses", "files"], security={"bearer": []})
def upload_thumbnail(course_id: int):
    """Upload the course's cover image (multipart field `file`: png, jpg, jpeg, gif, webp)."""
    course, replaced = course_service.replace_thumbnail(
        course_id, current_user(), request.files.get("file") or request.files.get("thumbnail"))
    db.session.commit()
    file_service.delete(replaced)
    return {"message": "Thumbnail updated", "course": course.to_dict()}


# --- modules and prerequisites of a course ----------------------------------------------------

@bp.get("/<int:course_id>/modules")
@validate(resp=Response(HTTP_200=CourseOutlineResponse, **errors(404)), **TAGS)
def list_course_modules(course_id: int):
    """The course's modules and lessons, restricted as for the course detail."""
    viewer = optional_user()
    course = course_service.visible_course(course_id, viewer)
    level, _, modules = course_service.readable_outline(course, viewer)
    return {"course_id": course.id, "access": level, "modules": modules}


@bp.post("/<int:course_id>/modules")
@instructor_required
@validate(json=ModuleIn, resp=Response(HTTP_201=ModuleSavedResponse, **errors(401, 403, 404)),
          **AUTH)
def create_module(course_id: int):
    """Add a module (at `position`, or at the end)."""
    course = course_service.editable_course(course_id, current_user())
    module = course_service.create_module(course, json_body().model_dump(exclude_unset=True))
    db.session.commit()
    return {"message": "Module created", "module": module.to_dict()}, 201


@bp.put("/<int:course_id>/modules/reorder")
@instructor_required
@validate(json=IdList, resp=Response(HTTP_200=ModuleListSavedResponse, **errors(401, 403, 404)),
          **AUTH)
def reorder_modules(course_id: int):
    """Set the order of all the course's modules: `{"ids": [module ids in order]}`."""
    course = course_service.editable_course(course_id, current_user())
    modules = course_service.reorder_modules(course, json_body().ids)
    db.session.commit()
    return {"message": "Modules reordered", "modules": [m.to_dict() for m in modules]}


def prerequisite_list(course_id: int, viewer) -> dict:
    return {"course_id": course_id,
            "prerequisites": [{"id": c.id, "title": c.title, "slug": c.slug, "status": c.status}
                              for c in course_service.prerequisites_of(course_id, viewer)]}


@bp.get("/<int:course_id>/prerequisites")
@validate(resp=Response(HTTP_200=PrerequisiteListResponse, **errors(404)),
          tags=["courses", "prerequisites"])
def get_prerequisites(course_id: int):
    """The courses a student must complete before enrolling."""
    viewer = optional_user()
    course = course_service.visible_course(course_id, viewer)
    return prerequisite_list(course.id, viewer)


@bp.post("/<int:course_id>/prerequisites")
@instructor_required
@validate(json=PrerequisitesIn, resp=Response(HTTP_201=PrerequisitesSavedResponse,
                                              **errors(401, 403, 404)),
          tags=["courses", "prerequisites"], security={"bearer": []})
def add_prerequisites(course_id: int):
    """Add prerequisites (self-reference and cycles are 422, naming the cycle)."""
    course = course_service.editable_course(course_id, current_user())
    course_service.add_prerequisites(course, json_body().prerequisite_course_ids)
    db.session.commit()
    return {"message": "Prerequisites added", **prerequisite_list(course.id, current_user())}, 201


@bp.put("/<int:course_id>/prerequisites")
@instructor_required
@validate(json=PrerequisitesIn, resp=Response(HTTP_200=PrerequisitesSavedResponse,
                                              **errors(401, 403, 404)),
          tags=["courses", "prerequisites"], security={"bearer": []})
def replace_prerequisites(course_id: int):
    """Replace the whole set of prerequisites."""
    course = course_service.editable_course(course_id, current_user())
    course_service.replace_prerequisites(course, json_body().prerequisite_course_ids)
    db.session.commit()
    return {"message": "Prerequisites updated", **prerequisite_list(course.id, current_user())}


@bp.delete("/<int:course_id>/prerequisites/<int:prerequisite_id>")
@instructor_required
@validate(resp=Response(HTTP_200=MessageResponse, **errors(401, 403, 404)),
          tags=["courses", "prerequisites"], security={"bearer": []})
def remove_prerequisite(course_id: int, prerequisite_id: int):
    """Remove one prerequisite of the course."""
    course = course_service.editable_course(course_id, current_user())
    course_service.remove_prerequisite(course, prerequisite_id)
    db.session.commit()
    return {"message": "Prerequisite removed"}


# --- students of a course ---------------------------------------------------------------------

class CourseEnrollmentQuery(PageQuery):
    status: Literal[ENROLLMENT_STATUSES] | None = None


@bp.get("/<int:course_id>/enrollments")
@instructor_required
@validate(query=CourseEnrollmentQuery, resp=Response(HTTP_200=CourseEnrollmentListResponse,
                                                     **errors(401, 403, 404)),
          tags=["courses", "enrollments"], security={"bearer": []})
def course_enrollments(course_id: int):
    """Enrollments and progress of a course the instructor teaches (any course for an admin)."""
    course_service.editable_course(course_id, current_user())
    args = query_args()
    query = enrollment_service.enrollments_query(
        course_id=course_id, statuses=(args.status,) if args.status else None, with_students=True)
    rows, meta = paginate(query, args.page, args.per_page)
    progress = enrollment_service.progress_by_enrollment(rows)
    return {"enrollments": [
        {**enrollment_service.enrollment_dict(e, progress[e.id], course=False),
         "student": {"id": e.user.id, "full_name": e.user.full_name, "email": e.user.email}}
        for e in rows], "pagination": meta}
