"""Courses and their content: modules, lessons, lesson resources, prerequisites, thumbnails.

Who may see what is decided in one place, `access_level`: guests and users who are not
enrolled get the outline (titles, durations, previews); enrolled students, the owner and admins
get everything. Who may write is decided in `editable_course`: the course's instructor or an
admin. Deletions return the stored files to remove, so the caller removes them only after the
database change is committed.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter

from pydantic import TypeAdapter
from sqlalchemy import (
    ARRAY,
    JSON,
    Integer,
    Select,
    Text,
    any_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.orm import joinedload

from models import (
    Certificate,
    Course,
    CoursePrerequisite,
    Enrollment,
    Lesson,
    LessonProgress,
    LessonResource,
    LiveSession,
    LiveSessionAttendance,
    Module,
    Payment,
    Subcategory,
    User,
    as_text,
    db,
    is_open_enrollment,
)
from services import file_service
from utils.errors import Conflict, Forbidden, NotFound, ValidationError
from utils.helpers import Columns, Written, utcnow
from utils.pagination import PageStatement, paginate_rows
from utils.pipeline import catalog_cache
from utils.responses import CourseSummaryOut
from utils.validators import slugify

# --- access -----------------------------------------------------------------------------------
# Who may read a course's content: its instructor, an admin, and students whose enrollment is
# open (`has_full_content(access_level(course, user))`); lists filter with its SQL twin,
# `full_content_readable_by(user)`. Published courses show their outline to everyone.

def is_enrolled(user_id: int, course_id: int) -> bool:
    return db.session.scalar(select(exists().where(
        Enrollment.user_id == user_id, Enrollment.course_id == course_id,
        is_open_enrollment(Enrollment.status)))) or False


def access_level(course: Course | CourseCard, user: User | None) -> str:
    """'admin', 'owner', 'enrolled' or 'guest' (anyone else, signed in or not). A card read
    for `user` (`course_card`) already says whether they are enrolled."""
    if user is None:
        return "guest"
    if user.role == "admin":
        return "admin"
    if course.instructor_id == user.id:
        return "owner"
    if course.enrolled if isinstance(course, CourseCard) else is_enrolled(user.id, course.id):
        return "enrolled"
    return "guest"


def has_full_content(level: str) -> bool:
    return level in ("admin", "owner", "enrolled")


def full_content_readable_by(user: User):
    """The SQL twin of `has_full_content(access_level(course, user))`: a condition on Course
    for the courses whose full content `user` may read (every course for an admin)."""
    if user.role == "admin":
        return true()
    enrolled = select(Enrollment.course_id).where(
        Enrollment.user_id == user.id, is_open_enrollment(Enrollment.status))
    return or_(Course.instructor_id == user.id, Course.id.in_(enrolled))


def get_course(course_id: int) -> Course:
    """The course with its instructor and subcategory (every answer shows their cards): one
    statement rather than three."""
    course = db.session.get(Course, course_id, options=[joinedload(Course.instructor),
                                                        joinedload(Course.subcategory)])
    if course is None:
        raise NotFound("Course not found")
    return course


def visible_course(course_id: int, user: User | None) -> Course:
    """A course the viewer may look at: published; or their own, or any for an admin; or one
    they are enrolled in (an archived course stays open to its students). Anything else is
    404, so drafts do not reveal that they exist."""
    return _visible(get_course(course_id), user)


def visible_card(course_id: int, user: User | None) -> CourseCard:
    """`visible_course` as a card (`course_card`) with its outline, for the course detail."""
    return _visible(course_card(course_id, user, with_outline=True), user)


def _visible(course, user: User | None):
    if course.status == "published" or has_full_content(access_level(course, user)):
        return course
    raise NotFound("Course not found")


def editable_course(course_id: int, user: User) -> Course:
    course = get_course(course_id)
    ensure_can_edit(course, user)
    return course


def editable_card(course_id: int, user: User) -> CourseCard:
    """`editable_course` as a card (`course_card`), for the course detail."""
    card = course_card(course_id, user)
    ensure_can_edit(card, user)
    return card


def ensure_can_edit(course: Course | CourseCard, user: User) -> None:
    if user.role != "admin" and course.instructor_id != user.id:
        raise Forbidden("Only the course's instructor or an admin can change it",
                        code="not_course_owner")


# --- courses ----------------------------------------------------------------------------------

def _unique_slug(base: str, exclude_id: int | None = None) -> str:
    query = select(Course.slug).where(or_(Course.slug == base, Course.slug.like(f"{base}-%")))
    if exclude_id is not None:
        query = query.where(Course.id != exclude_id)
    taken = set(db.session.scalars(query))
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _check_subcategory(subcategory_id: int | None) -> None:
    if subcategory_id is not None and db.session.get(Subcategory, subcategory_id) is None:
        raise ValidationError("The subcategory does not exist",
                              details={"subcategory_id": "does not exist"})


def _check_instructor(instructor_id: int) -> None:
    user = db.session.get(User, instructor_id)
    if user is None or user.role not in ("instructor", "admin") or not user.is_active:
        raise ValidationError("The instructor must be an active instructor or admin",
                              details={"instructor_id": "is not an active instructor"})


def lesson_count(course_id: int) -> int:
    return db.session.scalar(
        select(func.count(Lesson.id)).join(Module).where(Module.course_id == course_id)) or 0


def _apply_status(course: Course, status: str) -> None:
    if status == course.status:
        return
    if status == "published":
        if lesson_count(course.id) == 0:
            raise ValidationError("A course needs at least one lesson before it is published",
                                  code="course_empty", details={"status": "course has no lessons"})
        course.published_at = course.published_at or utcnow()
        course.review_requested_at = None
    course.status = status


def create_course(author: User, data: dict) -> Course:
    data = dict(data)
    instructor_id = data.pop("instructor_id", None)
    if author.role != "admin" or instructor_id is None:
        instructor_id = author.id
    else:
        _check_instructor(instructor_id)
    _check_subcategory(data.get("subcategory_id"))
    slug = data.pop("slug", None) or slugify(data["title"])
    course = Course(instructor_id=instructor_id, slug=_unique_slug(slug), status="draft", **data)
    db.session.add(course)
    db.session.flush()
    return course


def update_course(course: Course, changes: dict, actor: User) -> Course:
    changes = dict(changes)
    status = changes.pop("status", None)
    if "instructor_id" in changes:
        instructor_id = changes.pop("instructor_id")
        if actor.role == "admin" and instructor_id is not None:
            _check_instructor(instructor_id)
            course.instructor_id = instructor_id
            # The course's live sessions go with it (hosting is the course's instructor's:
            # live_session_service.is_host); the former instructor keeps none of them.
            db.session.execute(update(LiveSession).where(LiveSession.course_id == course.id)
                               .values(instructor_id=instructor_id),
                               execution_options={"synchronize_session": False})
    if "subcategory_id" in changes:
        _check_subcategory(changes["subcategory_id"])
    if changes.get("slug"):
        changes["slug"] = _unique_slug(slugify(changes["slug"]), course.id)
    elif "slug" in changes:
        changes.pop("slug")
    for name, value in changes.items():
        setattr(course, name, value)
    if status is not None:
        _apply_status(course, status)
    return course


def request_review(course: Course) -> Course:
    if course.status != "draft":
        raise Conflict("Only draft courses can be submitted for review")
    if lesson_count(course.id) == 0:
        raise ValidationError("A course needs at least one lesson before review",
                              code="course_empty")
    course.review_requested_at = utcnow()
    return course


def set_status(course: Course, status: str) -> Course:
    _apply_status(course, status)
    return course


@dataclass
class Removal:
    """What a delete did, and the stored files to remove once it is committed."""

    outcome: str  # "deleted" or "archived"
    files: list[str] = field(default_factory=list)


def _has_student_records(course_id: int) -> bool:
    return any(db.session.scalar(select(exists().where(model.course_id == course_id)))
               for model in (Enrollment, Payment, Certificate))


def _resource_paths(lesson_ids) -> list[str]:
    return list(db.session.scalars(select(LessonResource.stored_path)
                                   .where(LessonResource.lesson_id.in_(lesson_ids))))


def delete_course(course: Course) -> Removal:
    """Archive a course that students' records refer to; delete one that nobody took."""
    if _has_student_records(course.id):
        course.status = "archived"
        return Removal("archived")
    module_ids = select(Module.id).where(Module.course_id == course.id)
    lesson_ids = select(Lesson.id).where(Lesson.module_id.in_(module_ids))
    files = _resource_paths(lesson_ids)
    if course.thumbnail_url and course.thumbnail_url.startswith(file_service.PUBLIC_URL_PREFIX):
        files.append(course.thumbnail_url[len(file_service.PUBLIC_URL_PREFIX):])
    session_ids = select(LiveSession.id).where(LiveSession.course_id == course.id)
    for statement in (
        delete(LiveSessionAttendance).where(LiveSessionAttendance.live_session_id.in_(session_ids)),
        delete(LiveSession).where(LiveSession.course_id == course.id),
        delete(LessonResource).where(LessonResource.lesson_id.in_(lesson_ids)),
        delete(Lesson).where(Lesson.module_id.in_(module_ids)),
        delete(Module).where(Module.course_id == course.id),
        delete(CoursePrerequisite).where(or_(CoursePrerequisite.course_id == course.id,
                                             CoursePrerequisite.prerequisite_course_id == course.id)),
    ):
        db.session.execute(statement, execution_options={"synchronize_session": False})
    db.session.delete(course)
    return Removal("deleted", files)


def replace_thumbnail(course_id: int, user: User, upload) -> tuple[Course, str | None]:
    """Store a new thumbnail for a course `user` may change: (the course, the stored path of
    the thumbnail it replaces, for the caller to delete once the change is committed)."""
    course = editable_course(course_id, user)
    return course, set_thumbnail(course, upload)


def set_thumbnail(course: Course, upload) -> str | None:
    """Store a new thumbnail; returns the stored path of the one it replaces."""
    course.thumbnail_url, replaced = file_service.store_public_image(
        upload, "thumbnails", course.thumbnail_url)
    return replaced


# --- ordering ---------------------------------------------------------------------------------

def _place(siblings: list, item, position: int | None) -> None:
    """Put `item` at `position` among `siblings` (None: at the end) and renumber 0..n-1, so
    the order stays stable and gap-free."""
    others = [s for s in siblings if s is not item]
    index = len(others) if position is None else max(0, min(position, len(others)))
    others.insert(index, item)
    for number, sibling in enumerate(others):
        sibling.position = number


def _reorder(siblings: list, ordered_ids: list[int], what: str) -> list:
    """Number `siblings` in the order of `ordered_ids` (each exactly once); returns them so."""
    by_id = {s.id: s for s in siblings}
    if sorted(ordered_ids) != sorted(by_id):
        raise ValidationError(f"Give every {what} of the parent exactly once",
                              details={f"{what}_ids": f"must list each {what} id once"})
    for number, item_id in enumerate(ordered_ids):
        by_id[item_id].position = number
    return sorted(siblings, key=lambda item: item.position)


def _modules_of(course_id: int) -> list[Module]:
    return list(db.session.scalars(select(Module).where(Module.course_id == course_id)
                                   .order_by(Module.position, Module.id)))


def _lessons_of(module_id: int) -> list[Lesson]:
    return list(db.session.scalars(select(Lesson).where(Lesson.module_id == module_id)
                                   .order_by(Lesson.position, Lesson.id)))


def _resources_of(lesson_id: int) -> list[LessonResource]:
    return list(db.session.scalars(select(LessonResource)
                                   .where(LessonResource.lesson_id == lesson_id)
                                   .order_by(LessonResource.position, LessonResource.id)))


# --- modules ----------------------------------------------------------------------------------

def get_module(module_id: int) -> Module:
    module = db.session.get(Module, module_id)
    if module is None:
        raise NotFound("Module not found")
    return module


def create_module(course: Course, data: dict) -> Module:
    data = dict(data)
    position = data.pop("position", None)
    module = Module(course_id=course.id, **data)
    db.session.add(module)
    _place(_modules_of(course.id), module, position)
    db.session.flush()
    return module


def _update_placed(item, changes: dict, siblings) -> None:
    """Set the changed fields of a module, lesson or resource; a `position` moves it among
    `siblings()` (read after the other fields are set)."""
    changes = dict(changes)
    position = changes.pop("position", None)
    for name, value in changes.items():
        setattr(item, name, value)
    if position is not None:
        _place(siblings(), item, position)


def update_module(module: Module, changes: dict) -> Module:
    _update_placed(module, changes, lambda: _modules_of(module.course_id))
    return module


def reorder_modules(course: Course, module_ids: list[int]) -> list[Module]:
    return _reorder(_modules_of(course.id), module_ids, "module")


def delete_module(module: Module) -> None:
    lessons = db.session.scalar(select(func.count()).select_from(Lesson)
                                .where(Lesson.module_id == module.id))
    if lessons:
        raise Conflict(f"This module still has {lessons} lesson{'' if lessons == 1 else 's'}; "
                       "delete or move them first", code="has_children",
                       details={"lessons": lessons})
    course_id = module.course_id
    db.session.delete(module)
    db.session.flush()
    _renumber(_modules_of(course_id))


def _renumber(items: list) -> None:
    for number, item in enumerate(items):
        item.position = number


# --- lessons ----------------------------------------------------------------------------------

def get_lesson(lesson_id: int) -> Lesson:
    lesson = db.session.get(Lesson, lesson_id)
    if lesson is None:
        raise NotFound("Lesson not found")
    return lesson


def course_of_lesson(lesson: Lesson) -> Course:
    return db.session.get(Course, db.session.get(Module, lesson.module_id).course_id)


def create_lesson(module: Module, data: dict) -> Lesson:
    data = dict(data)
    position = data.pop("position", None)
    lesson = Lesson(module_id=module.id, **data)
    db.session.add(lesson)
    _place(_lessons_of(module.id), lesson, position)
    db.session.flush()
    return lesson


def update_lesson(lesson: Lesson, changes: dict) -> Lesson:
    changes = dict(changes)
    position = changes.pop("position", None)
    target_module_id = changes.pop("module_id", None)
    if target_module_id is not None and target_module_id != lesson.module_id:
        target = db.session.get(Module, target_module_id)
        if target is None:
            raise ValidationError("The target module does not exist",
                                  details={"module_id": "does not exist"})
        if target.course_id != db.session.get(Module, lesson.module_id).course_id:
            raise ValidationError("A lesson can only move to a module of the same course",
                                  details={"module_id": "belongs to another course"})
        old_module_id = lesson.module_id
        lesson.module_id = target.id
        db.session.flush()
        _renumber(_lessons_of(old_module_id))
        _place(_lessons_of(target.id), lesson, position)
        position = None
    _update_placed(lesson, {**changes, "position": position},
                   lambda: _lessons_of(lesson.module_id))
    return lesson


def reorder_lessons(module: Module, lesson_ids: list[int]) -> list[Lesson]:
    return _reorder(_lessons_of(module.id), lesson_ids, "lesson")


def delete_lesson(lesson: Lesson) -> Removal:
    """Delete a lesson with its resources and the progress recorded on it (progress
    percentages are computed from the lessons that exist)."""
    files = _resource_paths([lesson.id])
    module_id = lesson.module_id
    db.session.execute(delete(LessonResource).where(LessonResource.lesson_id == lesson.id),
                       execution_options={"synchronize_session": False})
    db.session.execute(delete(LessonProgress).where(LessonProgress.lesson_id == lesson.id),
                       execution_options={"synchronize_session": False})
    db.session.delete(lesson)
    db.session.flush()
    _renumber(_lessons_of(module_id))
    return Removal("deleted", files)


# --- lesson resources -------------------------------------------------------------------------

def get_resource(resource_id: int) -> LessonResource:
    resource = db.session.get(LessonResource, resource_id)
    if resource is None:
        raise NotFound("Resource not found")
    return resource


def course_of_resource(resource: LessonResource) -> Course:
    return course_of_lesson(db.session.get(Lesson, resource.lesson_id))


def create_resource(lesson: Lesson, upload, *, title: str | None, description: str | None,
                    uploader: User, position: int | None = None) -> LessonResource:
    stored = file_service.save(upload, "resources")
    resource = LessonResource(
        lesson_id=lesson.id, title=(title or stored.original_filename)[:200],
        description=description, original_filename=stored.original_filename,
        stored_path=stored.relative_path, mime_type=stored.mime_type, file_type=stored.kind,
        file_size=stored.size, sha256=stored.sha256, uploaded_by_id=uploader.id)
    db.session.add(resource)
    _place(_resources_of(lesson.id), resource, position)
    try:
        db.session.flush()
    except Exception:
        file_service.delete(stored.relative_path)  # nothing half-written on disk either
        raise
    return resource


def upload_resource(lesson_id: int, user: User, upload, *, title: str | None,
                    description: str | None) -> LessonResource:
    """Attach an uploaded file to a lesson of a course `user` may change."""
    lesson = get_lesson(lesson_id)
    ensure_can_edit(course_of_lesson(lesson), user)
    return create_resource(lesson, upload, title=title, description=description, uploader=user)


def readable_resource(resource_id: int, user: User) -> LessonResource:
    """A resource the caller may open: enrolled students, the owner and admins."""
    resource = get_resource(resource_id)
    course = visible_course(course_of_resource(resource).id, user)
    if not has_full_content(access_level(course, user)):
        raise Forbidden("Enroll in the course to open its resources", code="not_enrolled")
    return resource


def update_resource(resource: LessonResource, changes: dict) -> LessonResource:
    _update_placed(resource, changes, lambda: _resources_of(resource.lesson_id))
    return resource


def delete_resource(resource: LessonResource) -> Removal:
    lesson_id = resource.lesson_id
    path = resource.stored_path
    db.session.delete(resource)
    db.session.flush()
    _renumber(_resources_of(lesson_id))
    return Removal("deleted", [path])


# --- prerequisites ----------------------------------------------------------------------------

def _prerequisite_statements(*columns) -> dict[str, object]:
    """A course's prerequisites (`columns` of each), as each kind of reader may see them:
    "all" (an admin, the rules), "guest" (the published ones), "signed_in" (also their own
    drafts). Built once: building them cost more than running them."""
    every = (select(*columns)
             .join(CoursePrerequisite, CoursePrerequisite.prerequisite_course_id == Course.id)
             .where(CoursePrerequisite.course_id == bindparam("course_id")).order_by(Course.id))
    published = Course.status == "published"
    return {"all": every, "guest": every.where(published),
            "signed_in": every.where(or_(published,
                                         Course.instructor_id == bindparam("viewer_id")))}


_PREREQUISITES = _prerequisite_statements(Course)
_PREREQUISITE_LINKS = _prerequisite_statements(Course.id, Course.title, Course.slug)


def _prerequisites(statements: dict, course_id: int, viewer: User | None, every: bool,
                   execute=None):
    """`statements`' rows for the reader; `execute`: the session's (entities), or its
    connection's for columns (rows without the ORM's result handling)."""
    execute = execute or db.session.execute
    if every or (viewer is not None and viewer.role == "admin"):
        return execute(statements["all"], {"course_id": course_id})
    if viewer is None:
        return execute(statements["guest"], {"course_id": course_id})
    return execute(statements["signed_in"], {"course_id": course_id, "viewer_id": viewer.id})


def prerequisites_of(course_id: int, viewer: User | None = None, *,
                     every: bool = False) -> list[Course]:
    """The course's prerequisites `viewer` may see: the published ones, and their own drafts
    (an admin: all). `every=True`: all of them, for the rules (never for an answer)."""
    return list(_prerequisites(_PREREQUISITES, course_id, viewer, every).scalars())


def _find_path(graph: dict[int, set[int]], start: int, goal: int) -> list[int] | None:
    """A path start -> ... -> goal through `graph` (course -> its prerequisites), or None."""
    stack, seen = [(start, [start])], {start}
    while stack:
        node, path = stack.pop()
        if node == goal:
            return path
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def _validate_prerequisites(course: Course, ids: list[int], graph: dict[int, set[int]]) -> None:
    if course.id in ids:
        raise ValidationError("A course cannot require itself", code="prerequisite_cycle",
                              details={"prerequisite_course_ids": "contains the course itself"})
    # Only a published course or one of the same instructor's: another instructor's draft
    # is reported as unknown, as it is everywhere else, so its existence stays private.
    found = set(db.session.scalars(select(Course.id).where(
        Course.id.in_(ids),
        or_(Course.status == "published", Course.instructor_id == course.instructor_id))))
    missing = sorted(set(ids) - found)
    if missing:
        raise ValidationError("Some prerequisite courses do not exist",
                              details={"prerequisite_course_ids": f"unknown ids {missing}"})
    for prerequisite_id in ids:
        path = _find_path(graph, prerequisite_id, course.id)
        if path:
            cycle = [course.id] + path
            titles = dict(db.session.execute(select(Course.id, Course.title)
                                             .where(Course.id.in_(cycle))).all())
            named = " -> ".join(f"{titles.get(c, c)} (#{c})" for c in cycle)
            raise ValidationError(f"This would create a prerequisite cycle: {named}",
                                  code="prerequisite_cycle",
                                  details={"prerequisite_course_ids": named, "cycle": cycle})


def _graph(exclude_course: int | None = None) -> dict[int, set[int]]:
    graph: dict[int, set[int]] = {}
    for course_id, prerequisite_id in db.session.execute(
            select(CoursePrerequisite.course_id, CoursePrerequisite.prerequisite_course_id)):
        if course_id != exclude_course:
            graph.setdefault(course_id, set()).add(prerequisite_id)
    return graph


def add_prerequisites(course: Course, ids: list[int]) -> list[Course]:
    ids = list(dict.fromkeys(ids))
    current = {c.id for c in prerequisites_of(course.id, every=True)}
    new = [i for i in ids if i not in current]
    graph = _graph()
    graph.setdefault(course.id, set()).update(current)
    _validate_prerequisites(course, new, graph)
    for prerequisite_id in new:
        db.session.add(CoursePrerequisite(course_id=course.id, prerequisite_course_id=prerequisite_id))
    db.session.flush()
    return prerequisites_of(course.id, every=True)


def replace_prerequisites(course: Course, ids: list[int]) -> list[Course]:
    ids = list(dict.fromkeys(ids))
    _validate_prerequisites(course, ids, _graph(exclude_course=course.id))
    db.session.execute(delete(CoursePrerequisite).where(CoursePrerequisite.course_id == course.id),
                       execution_options={"synchronize_session": False})
    for prerequisite_id in ids:
        db.session.add(CoursePrerequisite(course_id=course.id, prerequisite_course_id=prerequisite_id))
    db.session.flush()
    return prerequisites_of(course.id, every=True)


def remove_prerequisite(course: Course, prerequisite_id: int) -> None:
    removed = db.session.execute(delete(CoursePrerequisite).where(
        CoursePrerequisite.course_id == course.id,
        CoursePrerequisite.prerequisite_course_id == prerequisite_id)).rowcount
    if not removed:
        raise NotFound("This course does not require that course")


def missing_prerequisites(user_id: int, course_id: int) -> list[Course]:
    """Published prerequisites of the course that the user has not completed (for
    enrollment). One that is not published cannot be taken, so it is not required, and its
    title is not shown to a student."""
    completed = select(Enrollment.course_id).where(Enrollment.user_id == user_id,
                                                   Enrollment.status == "completed")
    return list(db.session.scalars(
        select(Course).join(CoursePrerequisite, CoursePrerequisite.prerequisite_course_id == Course.id)
        .where(CoursePrerequisite.course_id == course_id, Course.id.not_in(completed),
               Course.status == "published")
        .order_by(Course.id)))


# --- reading ----------------------------------------------------------------------------------
# The hot reads (the catalog's lists, the course detail) select the columns they show and build
# no ORM entity: loading entities cost most of their CPU (issue 21). Each row's columns become a
# small object with the attributes its model's `to_dict` reads, and that `to_dict` (the one
# list of the model's fields) serializes it, so an answer is the same whichever way it was read.

_COURSES, _USERS, _SUBCATEGORIES = Course.__table__, User.__table__, Subcategory.__table__
_MODULES, _LESSONS, _RESOURCES = Module.__table__, Lesson.__table__, LessonResource.__table__


class CourseCard(Columns):
    """A course as a list shows it: its columns, `instructor` (their public card) and
    `subcategory` (id, name, master_category_id), each None when absent; `enrolled`: whether
    the reader it was read for (`course_card`) is its student (None: not asked);
    `has_prerequisites`: whether any course is linked as its prerequisite (None: not asked);
    `outline`: its modules, when read with the card (`course_card(..., with_outline=True)`),
    and `completed_lessons`: the ids of the lessons the reader's open enrollment completed."""

    is_free = Course.is_free
    to_dict = Course.to_dict
    enrolled = None
    has_prerequisites = None  # whether it has any (`course_card`); None: not asked
    outline = None
    completed_lessons = frozenset()


class _Instructor(Columns):
    full_name = User.full_name
    to_dict = User.to_dict


class _Module(Columns):
    to_dict = Module.to_dict


class _Lesson(Columns):
    to_dict = Lesson.to_dict


class _Resource(Columns):
    to_dict = LessonResource.to_dict


_COURSE_COLUMNS = tuple(_COURSES.c)
_INSTRUCTOR_COLUMNS = tuple(_USERS.c[name] for name in (
    "id", "first_name", "last_name", "role", "bio", "headline", "profile_picture"))
_SUBCATEGORY_COLUMNS = (_SUBCATEGORIES.c.id, _SUBCATEGORIES.c.name,
                        _SUBCATEGORIES.c.master_category_id)
_PEOPLE_COLUMNS = (
    *(column.label(f"instructor__{column.key}") for column in _INSTRUCTOR_COLUMNS),
    *(column.label(f"subcategory__{column.key}") for column in _SUBCATEGORY_COLUMNS))
CARD_COLUMNS = (*_COURSE_COLUMNS, *_PEOPLE_COLUMNS)
# One course's card, its timestamps read as the answer's text (models.as_text). Not inside a
# list's page: where a page's plan sorts its matches, PostgreSQL writes the text of every match
# before the LIMIT (a search matching 1,000 courses: 4,000 to_char calls, 2.8 ms against 1.1);
# a catalog page reads it over the limited page instead (`_card_page_as_text`).
_ONE_CARD_COLUMNS = (*as_text(_COURSE_COLUMNS), *_PEOPLE_COLUMNS)
_CARD_FROM = (_COURSES.outerjoin(_USERS, _USERS.c.id == _COURSES.c.instructor_id)
              .outerjoin(_SUBCATEGORIES, _SUBCATEGORIES.c.id == _COURSES.c.subcategory_id))
# Where each model's values sit in a card's row.
_N_COURSE, _N_INSTRUCTOR = len(_COURSE_COLUMNS), len(_INSTRUCTOR_COLUMNS)
N_CARD = len(CARD_COLUMNS)
_COURSE_NAMES = tuple(column.key for column in _COURSE_COLUMNS)
_INSTRUCTOR_NAMES = tuple(column.key for column in _INSTRUCTOR_COLUMNS)
_SUBCATEGORY_NAMES = tuple(column.key for column in _SUBCATEGORY_COLUMNS)


def card_of_row(row, json_text: bool = False) -> CourseCard:
    """A card from a row that begins with `CARD_COLUMNS` (columns after them are the
    caller's): the lists here and a learner's enrollments (enrollment_service) read courses
    this way. `json_text`: the row's JSON columns came as their text (`_card_page_as_text`)."""
    values = row[:_N_COURSE]
    if json_text:
        values = list(values)
        for index in _CARD_JSON_INDEXES:
            values[index] = None if values[index] is None else _json_of(values[index])
    card = CourseCard(_COURSE_NAMES, values)
    instructor = row[_N_COURSE:_N_COURSE + _N_INSTRUCTOR]
    card.instructor = _Instructor(_INSTRUCTOR_NAMES, instructor) if instructor[0] is not None \
        else None
    subcategory = row[_N_COURSE + _N_INSTRUCTOR:N_CARD]
    card.subcategory = Columns(_SUBCATEGORY_NAMES, subcategory) if subcategory[0] is not None \
        else None
    return card


def _json_as_text(columns) -> list:
    """`columns` with the card's JSON column read as its text, which `card_of_row(row,
    json_text=True)` decodes: psycopg2 decodes JSON as it fetches, each row's again (a course's
    page repeats its card on every outline row; a catalog's outcomes repeat across courses)."""
    return [cast(column, Text).label(column.key) if column.key in _CARD_JSON else column
            for column in columns]


def _card_page_as_text(columns) -> list:
    """How a page of cards is read (utils/pagination.PageStatement's `read_as`): timestamps as
    the API's text (models.as_text), the JSON column as its text (`_json_as_text`)."""
    return _json_as_text(as_text(columns))


@lru_cache(maxsize=1024)
def _decoded(text: str):
    return json.loads(text)


# The longest JSON text `_decoded` keeps: course outcomes are up to 50 of 300 characters (about
# 15,000 as JSON), and 1,024 kept at that length would be tens of MB a worker.
_KEPT_JSON = 2_048


def _json_of(text: str):
    """A JSON column's value from its text, decoded once per distinct text up to `_KEPT_JSON`
    characters (a longer one each time); a list is the caller's own copy (the outcomes are a
    list of strings, which no answer can change)."""
    value = _decoded(text) if len(text) <= _KEPT_JSON else json.loads(text)
    return list(value) if isinstance(value, list) else value


# Built once: a statement's construction and cache key cost more than its rows here.
# With whether the course has prerequisites at all: most have none, and the course detail then
# skips the statement that would list them.
_CARD = (select(*_ONE_CARD_COLUMNS, exists().where(
    CoursePrerequisite.course_id == _COURSES.c.id).label("has_prerequisites"))
         .select_from(_CARD_FROM).where(_COURSES.c.id == bindparam("course_id")))
_CARD_FOR_READER = _CARD.add_columns(exists().where(
    Enrollment.user_id == bindparam("reader_id"), Enrollment.course_id == _COURSES.c.id,
    is_open_enrollment(Enrollment.status)).label("enrolled"))


def course_card(course_id: int, reader: User | None = None, *,
                with_outline: bool = False) -> CourseCard:
    """The course as a card, in one statement; read for a signed-in reader who is not an
    admin, it also says whether their enrollment is open (`enrolled`), which `access_level`
    then reads instead of asking again. `with_outline`: the same statement also reads the
    course's outline (`_WITH_OUTLINE`), kept on the card (`outline`) for `readable_outline`,
    with the lessons the reader completed (`completed_lessons`: shown only if they prove to
    be its student). An outline read under the catalog version this request saw is kept
    (`_kept_outline`): the card is then read with the reader's completions alone."""
    asks = reader is not None and reader.role != "admin"
    connection = db.session.connection()  # table columns: no ORM result handling
    if not with_outline:
        row = connection.execute(_CARD_FOR_READER, {"course_id": course_id,
                                                    "reader_id": reader.id}).first() \
            if asks else connection.execute(_CARD, {"course_id": course_id}).first()
        if row is None:
            raise NotFound("Course not found")
        return _card(row, asks, json_text=False)
    key = _outline_key(connection, course_id)
    modules = _kept_outline(key)
    parameters = {"course_id": course_id, "reader_id": reader.id, "student_id": reader.id} \
        if asks else {"course_id": course_id}
    statement = _WITH_OUTLINE[asks] if modules is None else _WITH_COMPLETIONS[asks]
    rows = connection.execute(statement, parameters).all()
    # The card's row first (`_with_outline`); none: no such course.
    if not rows or rows[0][N_CARD + 1 + asks] != 0:
        raise NotFound("Course not found")
    card = _card(rows[0], asks, json_text=True)
    start = N_CARD + 2 + asks
    if modules is None:
        modules, card.completed_lessons, text = _outline_modules(rows[1:], start, asks)
        _keep_outline(key, modules, text)
    else:
        card.completed_lessons = frozenset(row[start] for row in rows[1:])
    card.outline = modules
    return card


def _card(row, asks: bool, json_text: bool) -> CourseCard:
    """The card of `course_card`'s row: the card's columns, whether the course has
    prerequisites, and (`asks`) whether the reader's enrollment is open."""
    card = card_of_row(row, json_text=json_text)
    card.has_prerequisites = bool(row[N_CARD])
    if asks:
        card.enrolled = row[N_CARD + 1]
    return card


# --- a course's outline, kept by course and catalog version -----------------------------------
# The outline (modules, lessons, resources) is written far less often than a course's page is
# read, and every write of it through the app bumps the catalog version in Redis
# (utils/pipeline/catalog_cache.py), which each request reads in its one round trip. An outline
# read under the version a request saw is kept in the process under it, and a later request
# that saw the same version reads the card and the reader's completions alone: the outline's
# join, its order and ~20 rows of text were most of the page's statement (PostgreSQL ~0.22 ms
# of CPU a page). Kept at most OUTLINE_SECONDS, so a write made around the app (psql), which
# bumps nothing, shows within that time, as a list's kept count does (utils/pagination.py);
# never kept without a version (no Redis, Redis down, a version that is not a number).
OUTLINE_SECONDS = 60
OUTLINE_KEYS = 256  # outlines a process keeps; past it, all are forgotten at once
# The most text a kept outline may hold (lesson bodies, descriptions: unbounded columns), so
# the memo stays within a few MB a worker; a longer outline is read each time.
KEPT_OUTLINE_TEXT = 32_768
_outlines: dict[tuple, tuple[float, tuple]] = {}


def _outline_key(connection, course_id: int) -> tuple | None:
    """The memo's key for the course under the catalog version this request read; None
    without one. The engine too: one process may serve two databases (the tests do)."""
    version = catalog_cache.version()
    return None if version is None else (connection.engine, course_id, version)


def _kept_outline(key: tuple | None) -> tuple | None:
    kept = _outlines.get(key) if key is not None else None
    if kept is None or time.monotonic() - kept[0] >= OUTLINE_SECONDS:
        return None
    return kept[1]


def _keep_outline(key: tuple | None, modules: tuple, text: int) -> None:
    if key is None or text > KEPT_OUTLINE_TEXT:
        return
    if len(_outlines) >= OUTLINE_KEYS:
        _outlines.clear()
    _outlines[key] = (time.monotonic(), modules)


_N_MODULE, _N_LESSON, _N_RESOURCE = len(_MODULES.c), len(_LESSONS.c), len(_RESOURCES.c)
_MODULE_NAMES = tuple(_MODULES.c.keys())
_LESSON_NAMES, _RESOURCE_NAMES = tuple(_LESSONS.c.keys()), tuple(_RESOURCES.c.keys())
_OUTLINE = (
    select(*as_text((*_MODULES.c, *_LESSONS.c, *_RESOURCES.c), lambda column: None))
    .select_from(_MODULES.outerjoin(_LESSONS, _LESSONS.c.module_id == _MODULES.c.id)
                 .outerjoin(_RESOURCES, _RESOURCES.c.lesson_id == _LESSONS.c.id))
    .where(_MODULES.c.course_id == bindparam("course_id"))
    .order_by(_MODULES.c.position, _MODULES.c.id, _LESSONS.c.position, _LESSONS.c.id,
              _RESOURCES.c.position, _RESOURCES.c.id))
_OUTLINE_FOR_STUDENT = _OUTLINE.add_columns(exists().where(
    LessonProgress.lesson_id == _LESSONS.c.id, LessonProgress.completed.is_(True),
    LessonProgress.enrollment_id.in_(select(Enrollment.id).where(
        Enrollment.user_id == bindparam("student_id"),
        Enrollment.course_id == bindparam("course_id"),
        is_open_enrollment(Enrollment.status)))).label("completed"))


def load_outline(course_id: int, student: User | None = None
                 ) -> tuple[tuple[_Module, ...], frozenset]:
    """Modules with their lessons and each lesson's resources, in order, in one statement (the
    three tables joined: a module without lessons, a lesson without resources, is one row
    with NULLs after it); and for a `student`, the ids of the lessons their open enrollment
    completed (else none)."""
    connection = db.session.connection()  # table columns: no ORM result handling
    if student is None:
        rows = connection.execute(_OUTLINE, {"course_id": course_id}).all()
    else:
        rows = connection.execute(_OUTLINE_FOR_STUDENT, {"course_id": course_id,
                                                         "student_id": student.id}).all()
    modules, completed, _text = _outline_modules(rows, 0, student is not None)
    return modules, completed


def _outline_modules(rows, start: int, completion: bool
                     ) -> tuple[tuple[_Module, ...], frozenset, int]:
    """The modules of outline rows whose outline columns begin at `start` (a row whose module
    is NULL: none); the lessons completed, from each row's last column if `completion`; and
    how many characters of text the outline holds (`_keep_outline`). The modules and their
    lists are tuples: a kept outline is shared by every request that reads it."""
    module_end, lesson_end = start + _N_MODULE, start + _N_MODULE + _N_LESSON
    modules: list = []
    completed = set()
    text = 0
    module = lesson = None
    for row in rows:
        if row[start] is None:
            continue  # a course without modules: its card's row alone
        text += sum(len(value) for value in row[start:lesson_end + _N_RESOURCE]
                    if isinstance(value, str))
        if module is None or module.id != row[start]:
            module = _Module(_MODULE_NAMES, row[start:module_end])
            module.lessons = []
            modules.append(module)
            lesson = None
        values = row[module_end:lesson_end]
        if values[0] is None:
            continue
        if lesson is None or lesson.id != values[0]:
            lesson = _Lesson(_LESSON_NAMES, values)
            lesson.resources = []
            if completion and row[-1]:
                completed.add(lesson.id)
            module.lessons.append(lesson)
        values = row[lesson_end:lesson_end + _N_RESOURCE]
        if values[0] is not None:
            lesson.resources.append(_Resource(_RESOURCE_NAMES, values))
    for module in modules:
        for lesson in module.lessons:
            lesson.resources = tuple(lesson.resources)
        module.lessons = tuple(module.lessons)
    return tuple(modules), frozenset(completed), text


def _with_outline(card: Select, outline: Select) -> Select:
    """`card`'s one row, then each row of `outline` (both bound to `course_id`), in the
    outline's order: one statement for a course's page instead of two. The card's row holds
    NULLs where the outline's columns are, and each outline row NULLs where the card's are,
    with `_PART` (0, 1) between them to put the card first. (Joined beside each outline row,
    the card's 31 columns were written by PostgreSQL and parsed by psycopg2 on all 20 rows
    of a 20-lesson outline: 270 -> 220 us of PostgreSQL's CPU and 101 -> 82 us of the
    client's a page, raw EXECUTEs of both statements.) The placeholders take their column's
    type, as a UNION's result is read by its first SELECT's types (a SQLite boolean). The
    JSON column comes as its text (`_json_as_text`), decoded once."""
    card_rows, outline_rows = card.subquery("card"), outline.order_by(None).subquery("outline")
    card_columns = _json_as_text(card_rows.c)
    outline_columns = [column.label(f"outline_{index}")
                       for index, column in enumerate(outline_rows.c)]
    first = select(*card_columns, literal_column("0", Integer).label(_PART),
                   *(type_coerce(null(), column.type).label(column.name)
                     for column in outline_columns))
    rest = select(*(null() for _ in card_columns), literal_column("1", Integer), *outline_columns)
    both = union_all(first, rest)
    named = both.selected_columns
    order = [named[_PART], *(named[outline_columns[index].name] for index in (
        _MODULE_NAMES.index("position"), _MODULE_NAMES.index("id"),
        _N_MODULE + _LESSON_NAMES.index("position"), _N_MODULE + _LESSON_NAMES.index("id"),
        _N_MODULE + _N_LESSON + _RESOURCE_NAMES.index("position"),
        _N_MODULE + _N_LESSON + _RESOURCE_NAMES.index("id")))]
    return both.order_by(*order)


_PART = "outline_part"  # 0: the card's row, 1: an outline row (`_with_outline`)


# By whether the reader is asked about (`course_card`): a guest's or an admin's, a learner's.
_CARD_JSON = frozenset(column.key for column in _COURSE_COLUMNS if isinstance(column.type, JSON))
_CARD_JSON_INDEXES = tuple(_COURSE_NAMES.index(name) for name in sorted(_CARD_JSON))
_WITH_OUTLINE = {False: _with_outline(_CARD, _OUTLINE),
                 True: _with_outline(_CARD_FOR_READER, _OUTLINE_FOR_STUDENT)}


def _with_completions(card: Select, learner: bool) -> Select:
    """`card`'s one row as `_with_outline` reads it, then (for a learner) one row for each
    lesson their open enrollment in the course completed, its id just after `_PART`: a
    course's page whose outline is kept (`_kept_outline`)."""
    card_rows = card.subquery("card")
    card_columns = _json_as_text(card_rows.c)
    first = select(*card_columns, literal_column("0", Integer).label(_PART),
                   type_coerce(null(), Integer).label("completed_lesson"))
    if not learner:
        return first  # a guest's or an admin's page: nobody's completions
    rest = select(*(null() for _ in card_columns), literal_column("1", Integer),
                  LessonProgress.lesson_id).where(
        LessonProgress.completed.is_(True), LessonProgress.enrollment_id.in_(
            select(Enrollment.id).where(Enrollment.user_id == bindparam("student_id"),
                                        Enrollment.course_id == bindparam("course_id"),
                                        is_open_enrollment(Enrollment.status))))
    both = union_all(first, rest)
    return both.order_by(both.selected_columns[_PART])


_WITH_COMPLETIONS = {False: _with_completions(_CARD, False),
                     True: _with_completions(_CARD_FOR_READER, True)}


def outline(modules, level: str, completed: frozenset = frozenset()) -> list[dict]:
    """Modules and their lessons as `level` may read them; each lesson says whether the reader
    completed it (its id in `completed`, read for the course's student; null for readers not
    enrolled)."""
    full = has_full_content(level)
    enrolled = level == "enrolled"
    result = []
    for module in modules:
        lessons = []
        for lesson in module.lessons:
            item = lesson.to_dict(full_content=full)
            item["resources"] = ([r.to_dict() for r in lesson.resources]
                                 if full or lesson.is_preview else [])
            item["completed"] = lesson.id in completed if enrolled else None
            lessons.append(item)
        entry = module.to_dict()
        entry["lessons"] = lessons
        result.append(entry)
    return result


def readable_outline(course: Course | CourseCard, viewer: User | None
                     ) -> tuple[str, tuple[_Module, ...], list[dict]]:
    """What `viewer` may read of the course's outline: their access level, the modules as read
    (one statement, with each lesson's completion for the course's student) and the outline
    answered."""
    level = access_level(course, viewer)
    modules = course.outline if isinstance(course, CourseCard) else None
    if modules is None:
        modules, completed = load_outline(course.id, viewer if level == "enrolled" else None)
    else:
        completed = course.completed_lessons
    return level, modules, outline(modules, level, completed)


def course_summary(course: Course | CourseCard) -> dict:
    """A course for lists: its fields, the instructor's public card, its subcategory."""
    data = course.to_dict()
    data["instructor"] = course.instructor.to_dict() if course.instructor else None
    data["subcategory"] = ({"id": course.subcategory.id, "name": course.subcategory.name,
                            "master_category_id": course.subcategory.master_category_id}
                           if course.subcategory else None)
    return data


def _cards(query):
    """A select of Course (filters, order) read as cards."""
    return query.with_only_columns(*CARD_COLUMNS, maintain_column_froms=False) \
        .select_from(_CARD_FROM)


def course_page(query, page: int, per_page: int) -> dict:
    """One page of a course list (`query`: a select of Course with its filters and order),
    each course as its summary, read as cards."""
    rows, meta = paginate_rows(_cards(query), page, per_page)
    return {"courses": [course_summary(card_of_row(row)) for row in rows], "pagination": meta}


@lru_cache(maxsize=64)
def _list_statement(build, shape: tuple, versions: bool) -> PageStatement:
    if versions:
        return PageStatement(build(shape).with_only_columns(
            _COURSES.c.id, *_ROW_VERSIONS, maintain_column_froms=False).select_from(_CARD_FROM))
    return PageStatement(_cards(build(shape)), read_as=_card_page_as_text)


def catalog_page(query, page: int, per_page: int) -> dict:
    """`course_page` of a catalog list given as its shape, values and builder (`query`:
    catalog_service.catalog_shape's CatalogQuery), its courses already written as JSON. The
    page's statement is built once per shape (which filters are set, the sort), the values
    bound at each call: building the list's select per request cost more CPU than running it.
    The 64 shapes used last are kept. The list is counted once per catalog version this request
    read (catalog_cache.version).

    On PostgreSQL the page reads each course's id and its rows' versions (`_ROW_VERSIONS`), and
    the cards only of the courses whose summary no process memo holds for those versions
    (`_by_version`): a second statement, which a page seen before does not need. Elsewhere the
    page reads the cards, and a summary is kept by its row's values (`_by_values`)."""
    connection = db.session.connection()
    versions = connection.dialect.name == "postgresql"
    rows, meta = _list_statement(query.build, query.shape, versions).page(
        query.values, page, per_page, catalog_cache.version())
    fragments = _by_version(connection, rows) if versions else None
    if fragments is None:  # not PostgreSQL, or a course gone between the two statements
        if versions:
            rows, meta = _list_statement(query.build, query.shape, False).page(
                query.values, page, per_page, catalog_cache.version())
        fragments = _by_values(rows)
    return {"courses": Written(fragments), "pagination": meta}


_SUMMARY_OUT = TypeAdapter(CourseSummaryOut)


def _summary_json(values) -> bytes:
    """A catalog row (the card's every column, its timestamps and JSON as text) as its
    summary's JSON, written as the list's body model writes each item."""
    return _SUMMARY_OUT.dump_json(course_summary(card_of_row(values, json_text=True)))


# A row version on PostgreSQL: the id of the transaction that wrote it (the system column
# `xmin`), which every UPDATE of the row changes (an UPDATE writes a new version). The summary
# is a function of the course's, its instructor's and its subcategory's columns alone, so the
# three rows' versions name it as surely as their values do, for a few bytes instead of the
# card's every column (its description, the instructor's bio). Transaction ids belong to one
# PostgreSQL cluster (a physical replica shares them): an engine moved to another cluster
# (a logical replica, a restored dump) could meet an id that cluster gave another version of
# the same course, so such a move wants the workers restarted, which empties the memo.
_ROW_VERSIONS = tuple(cast(literal_column(f"{table.name}.xmin"), Text).label(f"{table.name}_xmin")
                      for table in (_COURSES, _USERS, _SUBCATEGORIES))
_CARDS_BY_ID = (select(*_json_as_text(as_text(_COURSE_COLUMNS)), *_PEOPLE_COLUMNS,
                       *_ROW_VERSIONS)
                .select_from(_CARD_FROM)
                .where(_COURSES.c.id == any_(bindparam("ids", type_=ARRAY(Integer)))))

# The summaries' JSON kept in the process: by (engine, course id, the three rows' versions) on
# PostgreSQL, by the row's values elsewhere; the 512 used last. The row's columns of unbounded
# text (a description, the outcomes, the instructor's bio), and how much of them a kept row may
# hold: 512 rows of at most 16,384 characters of them (a description may be 50,000), so the
# memo stays a few MB a worker whatever the catalog holds.
_KEPT: OrderedDict = OrderedDict()
_KEPT_SIZE = 512
_KEPT_COUNTS = {"hits": 0, "misses": 0}
_LONG_TEXT = tuple(index for index, column in enumerate(CARD_COLUMNS)
                   if isinstance(column.type, (Text, JSON)))
_KEPT_TEXT = 16_384
_long_text_of = itemgetter(*_LONG_TEXT)  # a tuple: the card has three such columns


def _kept(key) -> bytes | None:
    fragment = _KEPT.get(key)
    _KEPT_COUNTS["misses" if fragment is None else "hits"] += 1
    if fragment is not None:
        with suppress(KeyError):  # dropped by another thread meanwhile
            _KEPT.move_to_end(key)
    return fragment


def _keep(key, values, fragment: bytes) -> None:
    if sum(map(len, filter(None, _long_text_of(values)))) > _KEPT_TEXT:
        return
    _KEPT[key] = fragment
    while len(_KEPT) > _KEPT_SIZE:
        with suppress(KeyError):
            _KEPT.popitem(last=False)


def _by_values(rows) -> list[bytes]:
    """Each card row's summary JSON, kept by the row's values (a changed row is a new key)."""
    fragments = []
    for row in rows:
        values = tuple(row)[:N_CARD]
        fragment = _kept(values)
        if fragment is None:
            fragment = _summary_json(values)
            _keep(values, values, fragment)
        fragments.append(fragment)
    return fragments


def _by_version(connection, rows) -> list[bytes] | None:
    """Each page row's summary JSON (a row: the course's id, its rows' versions), kept by those
    versions; the cards of the rest read in one statement and kept by the versions read with
    them. None when a course of the page is gone by then."""
    engine = connection.engine
    keys = [(engine, *row[:4]) for row in rows]
    fragments = [_kept(key) for key in keys]
    missing = [key[1] for key, fragment in zip(keys, fragments) if fragment is None]
    if not missing:
        return fragments
    fresh = {}
    for row in connection.execute(_CARDS_BY_ID, {"ids": missing}):
        values = tuple(row)
        fragment = fresh[values[0]] = _summary_json(values)
        _keep((engine, values[0], *values[N_CARD:]), values, fragment)
    fragments = [fragment if fragment is not None else fresh.get(key[1])
                 for key, fragment in zip(keys, fragments)]
    return None if None in fragments else fragments


def course_detail(course: CourseCard, viewer: User | None) -> dict:
    """The course with its outline as `viewer` may read it (`course` read for them by
    `course_card`): three statements with the card, whoever reads; two when the card says
    the course has no prerequisites; one less for a card read `with_outline`."""
    level, modules, answered = readable_outline(course, viewer)
    data = course_summary(course)
    data["modules"] = answered
    data["lesson_count"] = sum(len(m.lessons) for m in modules)
    data["prerequisites"] = [
        {"id": c.id, "title": c.title, "slug": c.slug}
        for c in _prerequisites(_PREREQUISITE_LINKS, course.id, viewer, False,
                                db.session.connection().execute)
    ] if course.has_prerequisites is not False else []
    data["access"] = level
    data["has_full_access"] = has_full_content(level)
    return data
