"""The whole data model, in one file.

Conventions: SQLAlchemy 2 typed mappings; every time is timezone-aware UTC (UTCDateTime);
money is Numeric(10, 2) beside an ISO 4217 currency; enumerations are short strings guarded by
named CHECK constraints; JSON is JSONB on PostgreSQL and JSON elsewhere. Serialization is
explicit: each `to_dict` names its fields, so a new column never leaks by accident.
"""
from __future__ import annotations

from contextlib import nullcontext
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from flask import current_app, has_app_context
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    event,
    literal,
    text,
    types,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from utils import passwords, tallies
from utils.helpers import iso, money, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)


@event.listens_for(Engine, "connect")
def _sqlite_foreign_keys(dbapi_connection, connection_record):
    # SQLite ignores foreign keys unless asked, per connection.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


class UTCDateTime(types.TypeDecorator):
    """DateTime(timezone=True) that always hands back aware UTC values, also on SQLite
    (which stores no offset), and refuses naive input rather than guessing its zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a timezone-aware column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class IsoText(types.TypeDecorator):
    """A UTCDateTime read as the API's text for it (`iso_text`)."""

    impl = types.String
    cache_ok = True

    def result_processor(self, dialect, coltype):
        # PostgreSQL's text is the answer's: no call per value.
        if dialect.name == "postgresql":
            return None
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        # SQLite hands back what it stores: the UTC time as text, without an offset.
        return iso(datetime.fromisoformat(value) if isinstance(value, str) else value)


class iso_text(FunctionElement):  # noqa: N801 (named as the SQL function it stands for)
    """A timestamp column read as utils.helpers.iso writes it ("2026-12-07T09:30:00+00:00"),
    which the models' `to_dict` then passes through. PostgreSQL writes it (`to_char` in UTC)
    for a fraction of what parsing it into a datetime and formatting that again cost here (a
    course's outline of 20 lessons read 124 timestamps). Only for a statement that returns
    every row it reads: below a sort cut by a LIMIT, PostgreSQL writes the text of every row
    it sorts, before the LIMIT (a list's page reads it in a projection over the limited page:
    utils/pagination._page_read_as)."""

    type = IsoText()
    inherit_cache = True


@compiles(iso_text)
def _iso_text(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


@compiles(iso_text, "postgresql")
def _iso_text_postgresql(element, compiler, **kw):
    return ("to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')"
            % compiler.process(element.clauses, **kw))


def as_text(columns, label=lambda column: column.key) -> tuple:
    """`columns` for a read whose timestamps only go to an answer: each UTCDateTime one as
    `iso_text`, labelled `label(column)` (its key; None: a name of SQLAlchemy's choosing)."""
    return tuple(iso_text(column).label(label(column)) if isinstance(column.type, UTCDateTime)
                 else column for column in columns)


JSONType = JSON().with_variant(JSONB(), "postgresql")
Money = Numeric(10, 2)


def one_of(column: str, values: tuple[str, ...], name: str | None = None) -> CheckConstraint:
    quoted = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({quoted})", name=name or f"{column}_valid")


def fk(target: str, ondelete: str = "CASCADE", **kwargs) -> Any:
    return ForeignKey(target, ondelete=ondelete, **kwargs)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False
    )


# ---------------------------------------------------------------------------------------------
# Accounts and security
# ---------------------------------------------------------------------------------------------

ROLES = ("student", "instructor", "admin")


def _hashing_slot():
    """The host's bound on password hashes computed at once (utils/pipeline/hash_slots.py),
    which the app installs in `app.extensions`; the model imports nothing above it."""
    if not has_app_context():
        return nullcontext()
    slot = current_app.extensions.get("password_hash_slot")
    return slot() if slot is not None else nullcontext()


class User(TimestampMixin, db.Model):
    __tablename__ = "users"
    __table_args__ = (
        one_of("role", ROLES),
        # The admin's newest registrations and user list read in this order.
        Index("ix_users_created_id", "created_at", "id"),
        # The admin's user list filtered by role, in the same order, at any size (issue 21).
        Index("ix_users_role_created_id", "role", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    phone_number: Mapped[str | None] = mapped_column(String(20), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    role: Mapped[str] = mapped_column(String(20), default="student", index=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    is_email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    is_phone_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    google_sub: Mapped[str | None] = mapped_column(String(255), unique=True)
    bio: Mapped[str | None] = mapped_column(Text)
    headline: Mapped[str | None] = mapped_column(String(200))
    date_of_birth: Mapped[date | None] = mapped_column(Date)
    country: Mapped[str | None] = mapped_column(String(100))
    city: Mapped[str | None] = mapped_column(String(100))
    website: Mapped[str | None] = mapped_column(String(500))
    profile_picture: Mapped[str | None] = mapped_column(String(500))
    failed_login_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Tokens issued before this instant are refused (password reset, deactivation).
    tokens_valid_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def set_password(self, password: str) -> None:
        """Store a new hash in the configured scheme (utils/passwords.py: Argon2id by default)."""
        with _hashing_slot():  # slow by design: a bounded number at once per host
            self.password_hash = passwords.hash_password(password)

    def check_password(self, password: str) -> bool:
        """Whether `password` is this user's. A match on a hash in an older scheme or cost
        (Werkzeug PBKDF2 from this system or the original one) stores a new hash in the
        configured scheme, which the caller's commit saves: accounts move at their next
        sign-in, without a reset."""
        if not self.password_hash:
            return False
        with _hashing_slot():
            if not passwords.verify(self.password_hash, password):
                return False
            if passwords.needs_rehash(self.password_hash):
                self.password_hash = passwords.hash_password(password)
        return True

    @property
    def full_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part).strip()

    def to_dict(self, *, private: bool = False) -> dict[str, Any]:
        data = {
            "id": self.id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "full_name": self.full_name,
            "role": self.role,
            "bio": self.bio,
            "headline": self.headline,
            "profile_picture": self.profile_picture,
        }
        if private:
            data.update(
                email=self.email,
                phone_number=self.phone_number,
                is_active=self.is_active,
                is_email_verified=self.is_email_verified,
                is_phone_verified=self.is_phone_verified,
                date_of_birth=self.date_of_birth.isoformat() if self.date_of_birth else None,
                country=self.country,
                city=self.city,
                website=self.website,
                has_password=bool(self.password_hash),
                last_login_at=iso(self.last_login_at),
                created_at=iso(self.created_at),
                updated_at=iso(self.updated_at),
            )
        return data


class PhoneVerification(db.Model):
    """A one-time code sent to a phone (console provider), or the record that Twilio Verify
    approved it; `verified_at` opens the window in which /auth/register accepts the phone."""

    __tablename__ = "phone_verifications"
    __table_args__ = (Index("ix_phone_verifications_phone_created", "phone_number", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    phone_number: Mapped[str] = mapped_column(String(20))
    code_hash: Mapped[str | None] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(20), default="console")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PasswordResetToken(db.Model):
    __tablename__ = "password_reset_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(fk("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship()


class RevokedToken(db.Model):
    """The database copy of the JWT blocklist, consulted when Redis is not configured."""

    __tablename__ = "revoked_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    token_type: Mapped[str] = mapped_column(String(10))
    user_id: Mapped[int | None] = mapped_column(fk("users.id", "SET NULL"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BlockedIP(db.Model):
    __tablename__ = "blocked_ips"

    id: Mapped[int] = mapped_column(primary_key=True)
    ip_address: Mapped[str] = mapped_column(String(45), unique=True)
    reason: Mapped[str | None] = mapped_column(String(255))
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    created_by_id: Mapped[int | None] = mapped_column(fk("users.id", "SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ip_address": self.ip_address,
            "reason": self.reason,
            "blocked_until": iso(self.blocked_until),
            "created_at": iso(self.created_at),
        }


SECURITY_EVENT_KINDS = ("login_failure", "unsafe_input")


class SecurityEvent(db.Model):
    """Failed logins and tripped input checks, per client address: what IP blocking counts.
    Kept in the database so every worker and host sees the same history."""

    __tablename__ = "security_events"
    __table_args__ = (
        one_of("kind", SECURITY_EVENT_KINDS),
        Index("ix_security_events_ip_kind_created", "ip_address", "kind", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    ip_address: Mapped[str] = mapped_column(String(45))
    # The e-mail tried, or the field that tripped the check (never the input itself).
    subject: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


# ---------------------------------------------------------------------------------------------
# Catalog: master category -> subcategory -> course -> module -> lesson -> resources
# ---------------------------------------------------------------------------------------------


class MasterCategory(TimestampMixin, db.Model):
    __tablename__ = "master_categories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    slug: Mapped[str] = mapped_column(String(140), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    icon_url: Mapped[str | None] = mapped_column(String(500))
    position: Mapped[int] = mapped_column(Integer, default=0)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)

    subcategories: Mapped[list[Subcategory]] = relationship(
        back_populates="master_category", order_by="Subcategory.position, Subcategory.id"
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "slug": self.slug,
            "description": self.description,
            "icon_url": self.icon_url,
            "position": self.position,
            "is_active": self.is_active,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class Subcategory(TimestampMixin, db.Model):
    __tablename__ = "subcategories"
    __table_args__ = (UniqueConstraint("master_category_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    master_category_id: Mapped[int] = mapped_column(
        fk("master_categories.id", "RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(120))
    slug: Mapped[str] = mapped_column(String(140), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer, default=0)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)

    master_category: Mapped[MasterCategory] = relationship(back_populates="subcategories")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "master_category_id": self.master_category_id,
            "name": self.name,
            "slug": self.slug,
            "description": self.description,
            "position": self.position,
            "is_active": self.is_active,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


COURSE_STATUSES = ("draft", "published", "archived")
# Written the way Alembic normalises what PostgreSQL reflects, so autogenerate sees no change;
# queries use the same expression, which is what lets the planner use the index.
COURSE_SEARCH_VECTOR = (
    "to_tsvector('simple'::regconfig, (((COALESCE(title, ''::character varying)::text || "
    "' '::text) || COALESCE(short_description, ''::character varying)::text) || ' '::text) || "
    "COALESCE(description, ''::text))"
)
DIFFICULTIES = ("beginner", "intermediate", "advanced")
MODES_OF_CONDUCT = ("ONLINE", "OFFLINE")


class CoursePrerequisite(db.Model):
    __tablename__ = "course_prerequisites"
    __table_args__ = (
        CheckConstraint("course_id <> prerequisite_course_id", name="not_self"),
    )

    course_id: Mapped[int] = mapped_column(fk("courses.id"), primary_key=True)
    prerequisite_course_id: Mapped[int] = mapped_column(
        fk("courses.id"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Course(TimestampMixin, db.Model):
    __tablename__ = "courses"
    __table_args__ = (
        one_of("status", COURSE_STATUSES),
        one_of("difficulty", DIFFICULTIES),
        one_of("mode_of_conduct", MODES_OF_CONDUCT),
        CheckConstraint("price >= 0", name="price_not_negative"),
        # The public catalog lists published courses newest first, filtered by subcategory.
        Index("ix_courses_status_created", "status", "created_at"),
        Index("ix_courses_subcategory_status", "subcategory_id", "status"),
        # Full-text search over title and descriptions (PostgreSQL; SQLite falls back to LIKE).
        Index("ix_courses_search", text(COURSE_SEARCH_VECTOR),
              postgresql_using="gin").ddl_if(dialect="postgresql"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(220), unique=True)
    short_description: Mapped[str | None] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text)
    price: Mapped[Decimal] = mapped_column(Money, default=Decimal("0.00"), index=True)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    difficulty: Mapped[str] = mapped_column(String(20), default="beginner")
    duration_hours: Mapped[Decimal | None] = mapped_column(Numeric(7, 2))
    learning_outcomes: Mapped[list] = mapped_column(JSONType, default=list)
    language: Mapped[str] = mapped_column(String(50), default="English")
    mode_of_conduct: Mapped[str] = mapped_column(String(10), default="ONLINE")
    status: Mapped[str] = mapped_column(String(20), default="draft")
    subcategory_id: Mapped[int | None] = mapped_column(
        fk("subcategories.id", "RESTRICT"), index=True
    )
    instructor_id: Mapped[int] = mapped_column(fk("users.id", "RESTRICT"), index=True)
    thumbnail_url: Mapped[str | None] = mapped_column(String(500))
    # Set when an instructor asks for review; the admin's pending list reads it.
    review_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    subcategory: Mapped[Subcategory | None] = relationship()
    instructor: Mapped[User] = relationship()
    modules: Mapped[list[Module]] = relationship(
        back_populates="course", order_by="Module.position, Module.id"
    )
    prerequisites: Mapped[list[Course]] = relationship(
        secondary="course_prerequisites",
        primaryjoin="Course.id == CoursePrerequisite.course_id",
        secondaryjoin="Course.id == CoursePrerequisite.prerequisite_course_id",
        order_by="Course.id",
        viewonly=True,
    )

    @property
    def is_free(self) -> bool:
        return self.price is None or Decimal(self.price) == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "slug": self.slug,
            "short_description": self.short_description,
            "description": self.description,
            "price": money(self.price),
            "currency": self.currency,
            "is_free": self.is_free,
            "difficulty": self.difficulty,
            "duration_hours": float(self.duration_hours) if self.duration_hours is not None else None,
            "learning_outcomes": list(self.learning_outcomes or []),
            "language": self.language,
            "mode_of_conduct": self.mode_of_conduct,
            "status": self.status,
            "awaiting_review": self.status == "draft" and self.review_requested_at is not None,
            "review_requested_at": iso(self.review_requested_at),
            "subcategory_id": self.subcategory_id,
            "instructor_id": self.instructor_id,
            "thumbnail_url": self.thumbnail_url,
            "published_at": iso(self.published_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class Module(TimestampMixin, db.Model):
    __tablename__ = "modules"
    __table_args__ = (Index("ix_modules_course_position", "course_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(fk("courses.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer, default=0)

    course: Mapped[Course] = relationship(back_populates="modules")
    lessons: Mapped[list[Lesson]] = relationship(
        back_populates="module", order_by="Lesson.position, Lesson.id"
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "course_id": self.course_id,
            "title": self.title,
            "description": self.description,
            "position": self.position,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class Lesson(TimestampMixin, db.Model):
    __tablename__ = "lessons"
    __table_args__ = (Index("ix_lessons_module_position", "module_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    module_id: Mapped[int] = mapped_column(fk("modules.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    content: Mapped[str | None] = mapped_column(Text)
    video_url: Mapped[str | None] = mapped_column(String(500))
    duration_minutes: Mapped[int | None] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)
    is_preview: Mapped[bool] = mapped_column(Boolean, default=False)

    module: Mapped[Module] = relationship(back_populates="lessons")
    resources: Mapped[list[LessonResource]] = relationship(
        back_populates="lesson", order_by="LessonResource.position, LessonResource.id"
    )

    def to_dict(self, *, full_content: bool = True) -> dict[str, Any]:
        """`full_content=False` is the outline a visitor sees: no body, no video URL,
        unless the lesson is a preview."""
        show = full_content or self.is_preview
        return {
            "id": self.id,
            "module_id": self.module_id,
            "title": self.title,
            "content": self.content if show else None,
            "video_url": self.video_url if show else None,
            "duration_minutes": self.duration_minutes,
            "position": self.position,
            "is_preview": self.is_preview,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


RESOURCE_KINDS = ("image", "pdf", "video", "audio", "document")


class LessonResource(TimestampMixin, db.Model):
    __tablename__ = "lesson_resources"
    __table_args__ = (one_of("file_type", RESOURCE_KINDS),)

    id: Mapped[int] = mapped_column(primary_key=True)
    lesson_id: Mapped[int] = mapped_column(fk("lessons.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    original_filename: Mapped[str] = mapped_column(String(255))
    # Relative to UPLOAD_FOLDER; a generated name, never the client's.
    stored_path: Mapped[str] = mapped_column(String(500), unique=True)
    mime_type: Mapped[str] = mapped_column(String(100))
    file_type: Mapped[str] = mapped_column(String(20))
    file_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer, default=0)
    uploaded_by_id: Mapped[int | None] = mapped_column(fk("users.id", "SET NULL"), index=True)

    lesson: Mapped[Lesson] = relationship(back_populates="resources")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "lesson_id": self.lesson_id,
            "title": self.title,
            "description": self.description,
            "original_filename": self.original_filename,
            "mime_type": self.mime_type,
            "file_type": self.file_type,
            "file_size": self.file_size,
            "position": self.position,
            "download_url": f"/api/v1/files/download/{self.id}",
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


# ---------------------------------------------------------------------------------------------
# Enrollment and progress
# ---------------------------------------------------------------------------------------------

ENROLLMENT_STATUSES = ("active", "completed", "cancelled", "refunded")
# An enrollment in one of these opens its course's content to the student.
OPEN_ENROLLMENT_STATUSES = ("active", "completed")


def is_open_enrollment(status):
    """`status IN ('active', 'completed')` (OPEN_ENROLLMENT_STATUSES) with each value its own
    bound parameter: a built statement's SQL is then rendered once, where an IN of a list
    (an "expanding" parameter) is rendered again at every run."""
    return status.in_([literal(value) for value in OPEN_ENROLLMENT_STATUSES])


class Enrollment(TimestampMixin, db.Model):
    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("user_id", "course_id"),
        one_of("status", ENROLLMENT_STATUSES),
        Index("ix_enrollments_course_status", "course_id", "status"),
        # A course's enrollments, newest first, without reading the others (issue 21).
        Index("ix_enrollments_course_enrolled_id", "course_id", "enrolled_at", "id"),
        # The admin dashboard's latest enrollments: read in this order, five rows, at any size.
        Index("ix_enrollments_enrolled_id", "enrolled_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(fk("users.id"), index=True)
    course_id: Mapped[int] = mapped_column(fk("courses.id", "RESTRICT"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="active")
    progress_percent: Mapped[Decimal] = mapped_column(Numeric(5, 2), default=Decimal("0.00"))
    payment_id: Mapped[int | None] = mapped_column(fk("payments.id", "SET NULL"), index=True)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_accessed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
    course: Mapped[Course] = relationship()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "course_id": self.course_id,
            "status": self.status,
            "progress_percent": float(self.progress_percent or 0),
            "payment_id": self.payment_id,
            "enrolled_at": iso(self.enrolled_at),
            "started_at": iso(self.started_at),
            "last_accessed_at": iso(self.last_accessed_at),
            "completed_at": iso(self.completed_at),
            "cancelled_at": iso(self.cancelled_at),
        }


class LessonProgress(TimestampMixin, db.Model):
    __tablename__ = "lesson_progress"
    __table_args__ = (UniqueConstraint("enrollment_id", "lesson_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(fk("enrollments.id"), index=True)
    lesson_id: Mapped[int] = mapped_column(fk("lessons.id"), index=True)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    watch_time_seconds: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_accessed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lesson_id": self.lesson_id,
            "completed": self.completed,
            "completed_at": iso(self.completed_at),
            "watch_time_seconds": self.watch_time_seconds,
            "started_at": iso(self.started_at),
            "last_accessed_at": iso(self.last_accessed_at),
        }


# ---------------------------------------------------------------------------------------------
# Payments
# ---------------------------------------------------------------------------------------------

GATEWAYS = ("razorpay", "stripe")
PAYMENT_STATUSES = ("created", "pending", "completed", "failed", "expired", "refunded")


class Payment(TimestampMixin, db.Model):
    __tablename__ = "payments"
    __table_args__ = (
        one_of("gateway", GATEWAYS),
        one_of("status", PAYMENT_STATUSES),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        # The refunded total (the sum of the payment's gateway refunds) never exceeds what was
        # paid.
        CheckConstraint("refunded_amount >= 0 AND refunded_amount <= amount",
                        name="refunded_within_amount"),
        Index("ix_payments_status_created", "status", "created_at"),
        Index("ix_payments_user_created", "user_id", "created_at"),
        # The admin's latest payments and payment list read in this order.
        Index("ix_payments_created_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(fk("users.id", "RESTRICT"))
    course_id: Mapped[int] = mapped_column(fk("courses.id", "RESTRICT"), index=True)
    gateway: Mapped[str] = mapped_column(String(20))
    gateway_order_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    gateway_payment_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    gateway_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default="created")
    refunded_amount: Mapped[Decimal] = mapped_column(Money, default=Decimal("0.00"))
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    gateway_response: Mapped[dict | None] = mapped_column(JSONType)
    invoice_number: Mapped[str | None] = mapped_column(String(50), unique=True)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    refunded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
    course: Mapped[Course] = relationship()

    @property
    def refund_status(self) -> str:
        """"none", "partial" or "full": how much of the payment has been refunded."""
        refunded = Decimal(self.refunded_amount or 0)
        if refunded <= 0:
            return "none"
        return "full" if refunded >= Decimal(self.amount) else "partial"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "course_id": self.course_id,
            "gateway": self.gateway,
            "gateway_order_id": self.gateway_order_id,
            "gateway_payment_id": self.gateway_payment_id,
            "amount": money(self.amount),
            "currency": self.currency,
            "status": self.status,
            "refunded_amount": money(self.refunded_amount),
            "refund_status": self.refund_status,
            "failure_reason": self.failure_reason,
            "invoice_number": self.invoice_number,
            "paid_at": iso(self.paid_at),
            "refunded_at": iso(self.refunded_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class InvoiceCounter(db.Model):
    """The last invoice number used in a year: invoice numbers are sequential without gaps,
    allocated with an atomic UPDATE ... RETURNING under the payment's settlement."""

    __tablename__ = "invoice_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_number: Mapped[int] = mapped_column(Integer, default=0)


class CreditNoteCounter(db.Model):
    """The last credit note number used in a year (CN-<year>-<000001>), allocated like the
    invoice numbers, one per recorded refund."""

    __tablename__ = "credit_note_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_number: Mapped[int] = mapped_column(Integer, default=0)


# "pending": asked, waiting for an admin; "approved": an admin approved it and the refund is
# being made at the gateway (in flight: the reconciler completes it); "processed": the refund
# is recorded; "rejected": declined. ("failed" is kept for rows written before 0008.)
REFUND_STATUSES = ("pending", "approved", "rejected", "processed", "failed")
OPEN_REFUND_STATUSES = ("pending", "approved")
_OPEN_REFUND = "status IN ('pending', 'approved')"


class RefundRequest(TimestampMixin, db.Model):
    __tablename__ = "refund_requests"
    __table_args__ = (
        one_of("status", REFUND_STATUSES),
        Index("ix_refund_requests_status_created", "status", "created_at"),
        # The admin's list of every request, oldest first (issue 21).
        Index("ix_refund_requests_created_id", "created_at", "id"),
        # One open request per payment, whoever races to file it.
        Index("uq_refund_requests_open_payment", "payment_id", unique=True,
              postgresql_where=text(_OPEN_REFUND), sqlite_where=text(_OPEN_REFUND)),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[int] = mapped_column(fk("payments.id", "RESTRICT"), index=True)
    user_id: Mapped[int] = mapped_column(fk("users.id", "RESTRICT"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    amount: Mapped[Decimal] = mapped_column(Money)
    reviewed_by_id: Mapped[int | None] = mapped_column(fk("users.id", "SET NULL"), index=True)
    admin_note: Mapped[str | None] = mapped_column(Text)
    gateway_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    payment: Mapped[Payment] = relationship()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "payment_id": self.payment_id,
            "user_id": self.user_id,
            "reason": self.reason,
            "status": self.status,
            "amount": money(self.amount),
            "admin_note": self.admin_note,
            "gateway_refund_id": self.gateway_refund_id,
            "decided_at": iso(self.decided_at),
            "processed_at": iso(self.processed_at),
            "created_at": iso(self.created_at),
        }


class PaymentRefund(db.Model):
    """One refund as the gateway made it, recorded once by its gateway refund id however it
    reached us (the approval, the gateway's webhook, the reconciler): a payment's refunded
    total is the sum of its rows, never more than was paid. Each has its credit note."""

    __tablename__ = "payment_refunds"
    __table_args__ = (
        UniqueConstraint("gateway", "gateway_refund_id"),
        one_of("gateway", GATEWAYS),
        CheckConstraint("amount > 0", name="amount_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[int] = mapped_column(fk("payments.id", "RESTRICT"), index=True)
    refund_request_id: Mapped[int | None] = mapped_column(fk("refund_requests.id", "SET NULL"),
                                                          index=True)
    gateway: Mapped[str] = mapped_column(String(20))
    gateway_refund_id: Mapped[str] = mapped_column(String(255))
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    # What recorded it first: "approval", "webhook", "reconcile", ...
    source: Mapped[str] = mapped_column(String(40))
    credit_note_number: Mapped[str] = mapped_column(String(50), unique=True)
    raw: Mapped[dict | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "payment_id": self.payment_id,
            "refund_request_id": self.refund_request_id,
            "gateway_refund_id": self.gateway_refund_id,
            "amount": money(self.amount),
            "currency": self.currency,
            "credit_note_number": self.credit_note_number,
            "credit_note_url": f"/api/v1/payments/{self.payment_id}/refunds/{self.id}/credit-note",
            "created_at": iso(self.created_at),
        }


WEBHOOK_STATUSES = ("received", "processed", "ignored", "failed")


class WebhookEvent(db.Model):
    """Every gateway event by its id: the unique key is what makes processing exactly-once.
    The id comes from inside the signed body (Stripe's event id; for Razorpay, whose body has
    none, the event type and the id of the object it is about), never from an unsigned
    header a replayer could change."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("gateway", "event_id"),
        one_of("gateway", GATEWAYS),
        one_of("status", WEBHOOK_STATUSES),
        Index("ix_webhook_events_waiting", "gateway", "waiting_for"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    gateway: Mapped[str] = mapped_column(String(20))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20), default="received")
    error: Mapped[str | None] = mapped_column(Text)
    payment_id: Mapped[int | None] = mapped_column(fk("payments.id", "SET NULL"), index=True)
    # A refund event about a payment not settled here yet: the gateway's id of that payment.
    # The event is kept "ignored" until the payment settles, then applied.
    waiting_for: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


IDEMPOTENCY_STATUSES = ("in_progress", "completed")


class IdempotencyKey(db.Model):
    """A client's `Idempotency-Key` on a POST that creates money or access: the first answer,
    kept for IDEMPOTENCY_KEY_HOURS so the same key from the same user gets it again rather
    than a second object. `fingerprint` (route + body) tells a reuse with another request."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "key"),
        one_of("status", IDEMPOTENCY_STATUSES),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(fk("users.id"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="in_progress")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict | None] = mapped_column(JSONType)
    response_headers: Mapped[dict | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # While in progress: until when the request that holds the key is presumed alive (a
    # worker killed mid-request leaves the key to the next retry after this).
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# ---------------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------------

CERTIFICATE_STATUSES = ("valid", "revoked")
SIGNING_KEY_PURPOSES = ("credential", "pdf")
STATUS_PURPOSES = ("revocation",)


class SigningKey(db.Model):
    """Every key the academy has signed with (services/credentials/keys.py). A key is recorded
    the first time it signs, and stays published (the DID document, the PDF check) after the
    signing key is rotated, so what it signed keeps verifying; `withdrawn_at` takes a
    compromised key out of both."""

    __tablename__ = "signing_keys"
    __table_args__ = (
        UniqueConstraint("purpose", "fingerprint"),
        one_of("purpose", SIGNING_KEY_PURPOSES),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    purpose: Mapped[str] = mapped_column(String(20))
    # credential: the Multikey publicKeyMultibase; pdf: the certificate's SHA-256 (hex)
    fingerprint: Mapped[str] = mapped_column(String(100))
    # credential: the same multibase key; pdf: the X.509 certificate (PEM)
    public_key: Mapped[str] = mapped_column(Text)
    first_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CredentialStatusList(db.Model):
    """A Bitstring Status List (W3C v1.0). Which bits are set is not stored here: a bit is set
    when the certificate holding that index is revoked. `revision` moves with every status
    change, so a cached, signed copy of the list is known to be current or not."""

    __tablename__ = "credential_status_lists"
    __table_args__ = (
        one_of("purpose", STATUS_PURPOSES),
        CheckConstraint("size > 0", name="size_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    purpose: Mapped[str] = mapped_column(String(20), default="revocation")
    size: Mapped[int] = mapped_column(Integer)
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def certificate_verify_url(number: str) -> str:
    """The public page that verifies a certificate (its link and QR code)."""
    return f"{current_app.config['PUBLIC_BASE_URL']}/verify/{number}"


class Certificate(db.Model):
    __tablename__ = "certificates"
    __table_args__ = (
        UniqueConstraint("user_id", "course_id"),
        # No two credentials share a status bit (services/credentials/status_list.py).
        UniqueConstraint("status_list_id", "status_list_index"),
        one_of("status", CERTIFICATE_STATUSES),
        # Certificate lists, newest first (an admin's: all of them) (issue 21).
        Index("ix_certificates_issued_id", "issued_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    certificate_number: Mapped[str] = mapped_column(String(80), unique=True)
    user_id: Mapped[int] = mapped_column(fk("users.id", "RESTRICT"), index=True)
    course_id: Mapped[int] = mapped_column(fk("courses.id", "RESTRICT"), index=True)
    enrollment_id: Mapped[int | None] = mapped_column(fk("enrollments.id", "SET NULL"), index=True)
    # What the certificate says, kept as issued even if names change later.
    holder_name: Mapped[str] = mapped_column(String(255))
    course_title: Mapped[str] = mapped_column(String(200))
    instructor_name: Mapped[str | None] = mapped_column(String(255))
    completion_date: Mapped[date] = mapped_column(Date)
    file_path: Mapped[str | None] = mapped_column(String(500))
    sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="valid")
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(500))
    # The signed Open Badges 3.0 credential, as issued (None: issued before credentials were;
    # made on first request). Its revocation bit: the index in a status list.
    credential_json: Mapped[str | None] = mapped_column(Text)
    status_list_id: Mapped[int | None] = mapped_column(
        fk("credential_status_lists.id", "RESTRICT"))
    status_list_index: Mapped[int | None] = mapped_column(Integer)
    # When the stored PDF was signed (None: an unsigned PDF from before, checked by its hash).
    pdf_signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "certificate_number": self.certificate_number,
            "user_id": self.user_id,
            "course_id": self.course_id,
            "holder_name": self.holder_name,
            "course_title": self.course_title,
            "instructor_name": self.instructor_name,
            "completion_date": self.completion_date.isoformat() if self.completion_date else None,
            "status": self.status,
            "sha256": self.sha256,
            "issued_at": iso(self.issued_at),
            "revoked_at": iso(self.revoked_at),
            "download_url": f"/api/v1/certificates/{self.id}/download",
            "verify_url": certificate_verify_url(self.certificate_number),
            "credential_download_url": f"/api/v1/certificates/{self.id}/credential",
            "credential_url": f"/api/v1/credentials/{self.certificate_number}",
            "pdf_signed": self.pdf_signed_at is not None,
        }


# ---------------------------------------------------------------------------------------------
# Live sessions
# ---------------------------------------------------------------------------------------------

PLATFORMS = ("zoom", "google_meet", "other")
LIVE_SESSION_STATUSES = ("scheduled", "cancelled")


class LiveSession(TimestampMixin, db.Model):
    __tablename__ = "live_sessions"
    __table_args__ = (
        one_of("platform", PLATFORMS),
        one_of("status", LIVE_SESSION_STATUSES),
        CheckConstraint("duration_minutes > 0", name="duration_positive"),
        Index("ix_live_sessions_course_start", "course_id", "start_time"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(fk("courses.id"), index=True)
    instructor_id: Mapped[int] = mapped_column(fk("users.id", "RESTRICT"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    start_time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    duration_minutes: Mapped[int] = mapped_column(Integer)
    # start_time + duration, derived on every write (below): "upcoming" and the join window are
    # plain comparisons on both databases.
    end_time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    platform: Mapped[str] = mapped_column(String(20), default="zoom")
    meeting_url: Mapped[str | None] = mapped_column(String(500))
    meeting_id: Mapped[str | None] = mapped_column(String(100))
    meeting_password: Mapped[str | None] = mapped_column(String(100))
    recording_url: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(20), default="scheduled")
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_dict(self, *, with_meeting: bool = False) -> dict[str, Any]:
        """Meeting details only for those allowed to join (`with_meeting=True`)."""
        data = {
            "id": self.id,
            "course_id": self.course_id,
            "instructor_id": self.instructor_id,
            "title": self.title,
            "description": self.description,
            "start_time": iso(self.start_time),
            "end_time": iso(self.end_time),
            "duration_minutes": self.duration_minutes,
            "platform": self.platform,
            "status": self.status,
            "recording_url": self.recording_url,
            "cancelled_at": iso(self.cancelled_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }
        if with_meeting:
            data.update(
                meeting_url=self.meeting_url,
                meeting_id=self.meeting_id,
                meeting_password=self.meeting_password,
            )
        return data


@event.listens_for(LiveSession, "before_insert")
@event.listens_for(LiveSession, "before_update")
def _live_session_end_time(mapper, connection, live: LiveSession) -> None:
    # end_time is derived: whoever writes a session, it matches start + duration.
    if live.start_time is not None and live.duration_minutes is not None:
        live.end_time = live.start_time + timedelta(minutes=live.duration_minutes)


class LiveSessionAttendance(db.Model):
    __tablename__ = "live_session_attendances"
    __table_args__ = (UniqueConstraint("live_session_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    live_session_id: Mapped[int] = mapped_column(fk("live_sessions.id"), index=True)
    user_id: Mapped[int] = mapped_column(fk("users.id"), index=True)
    first_joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    join_count: Mapped[int] = mapped_column(Integer, default=1)


# ---------------------------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------------------------

NOTIFICATION_KINDS = ("course_update", "live_session", "payment", "announcement", "system")


class Notification(db.Model):
    __tablename__ = "notifications"
    __table_args__ = (
        one_of("kind", NOTIFICATION_KINDS),
        # The unread badge and the list both read by (user, is_read) newest first.
        Index("ix_notifications_user_read_created", "user_id", "is_read", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(fk("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30), default="system")
    title: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    link: Mapped[str | None] = mapped_column(String(500))
    data: Mapped[dict | None] = mapped_column(JSONType)
    is_read: Mapped[bool] = mapped_column(Boolean, default=False)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "message": self.message,
            "link": self.link,
            "data": self.data,
            "is_read": self.is_read,
            "read_at": iso(self.read_at),
            "created_at": iso(self.created_at),
        }


class NotificationPreference(db.Model):
    """Email on/off per kind; in-app notifications are always on. No row = defaults."""

    __tablename__ = "notification_preferences"

    user_id: Mapped[int] = mapped_column(fk("users.id"), primary_key=True)
    email_course_updates: Mapped[bool] = mapped_column(Boolean, default=True)
    email_live_sessions: Mapped[bool] = mapped_column(Boolean, default=True)
    email_payments: Mapped[bool] = mapped_column(Boolean, default=True)
    email_announcements: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "email_course_updates": self.email_course_updates,
            "email_live_sessions": self.email_live_sessions,
            "email_payments": self.email_payments,
            "email_announcements": self.email_announcements,
            "in_app": True,
        }


# ---------------------------------------------------------------------------------------------
# Contact forms and the audit log
# ---------------------------------------------------------------------------------------------

CONTACT_STATUSES = ("new", "in_progress", "resolved", "closed")


class ContactForm(TimestampMixin, db.Model):
    __tablename__ = "contact_forms"
    __table_args__ = (
        one_of("status", CONTACT_STATUSES),
        Index("ix_contact_forms_status_created", "status", "created_at"),
        # The admin's list of every message, newest first (issue 21).
        Index("ix_contact_forms_created_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(255))
    phone_number: Mapped[str | None] = mapped_column(String(30))
    subject: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="new")
    admin_note: Mapped[str | None] = mapped_column(Text)
    ip_address: Mapped[str | None] = mapped_column(String(45))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "phone_number": self.phone_number,
            "subject": self.subject,
            "message": self.message,
            "status": self.status,
            "admin_note": self.admin_note,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class AuditLog(db.Model):
    """One row per admin write: who did what to which object, from where."""

    __tablename__ = "audit_logs"
    __table_args__ = (Index("ix_audit_logs_target", "target_type", "target_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(fk("users.id", "SET NULL"), index=True)
    action: Mapped[str] = mapped_column(String(100), index=True)
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[int | None] = mapped_column(Integer)
    details: Mapped[dict | None] = mapped_column(JSONType)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "actor_id": self.actor_id,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "details": self.details,
            "ip_address": self.ip_address,
            "request_id": self.request_id,
            "created_at": iso(self.created_at),
        }


class BackgroundJob(db.Model):
    """One background operation (e-mail delivery, e-mail fan-out, bulk certificates, payment
    reconciliation): the durable record of what was asked, by whom, and how it went. RQ runs it
    when Redis is configured (the queue carries only the id); it runs inline otherwise."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    args: Mapped[dict] = mapped_column(JSONType, default=dict)
    result: Mapped[dict | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[int | None] = mapped_column(fk("users.id", "SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


# ---------------------------------------------------------------------------------------------
# Sign-in: logins and their tokens, trusted sources, lockouts per account and source
# ---------------------------------------------------------------------------------------------

LOGIN_END_REASONS = ("logout", "reuse", "password", "admin")
TRUSTED_SOURCE_KINDS = ("device", "address")


class LoginSession(db.Model):
    """One login: the family of tokens a sign-in started. Only `refresh_jti` may be exchanged
    at /auth/refresh; a refresh token of the family that is not it (already rotated) ends the
    login (reuse detection)."""

    __tablename__ = "login_sessions"
    __table_args__ = (one_of("end_reason", LOGIN_END_REASONS),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(fk("users.id"), index=True)
    refresh_jti: Mapped[str] = mapped_column(String(64), unique=True)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str | None] = mapped_column(String(20))


class LoginToken(db.Model):
    """Every access token issued to a login, so that ending the login revokes each one still
    alive (its refresh token of the moment is login_sessions.refresh_jti)."""

    __tablename__ = "login_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(fk("login_sessions.id"), index=True)
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class TrustedSource(db.Model):
    """A device (the hash of its device token) or an address (its hash) that signed in to the
    account: failures from other sources do not lock it out."""

    __tablename__ = "trusted_sources"
    __table_args__ = (one_of("kind", TRUSTED_SOURCE_KINDS),
                      UniqueConstraint("user_id", "source_hash"))

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(fk("users.id"))  # indexed by the unique pair
    kind: Mapped[str] = mapped_column(String(10))
    source_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LoginThrottle(db.Model):
    """Failed sign-ins for one e-mail (its hash, known account or not) from one source (the
    hash of a trusted device or of an address; "*" for all untrusted sources of an e-mail
    without an account, whose counter for an account is users.failed_login_attempts), and the
    lock they led to."""

    __tablename__ = "login_throttles"
    __table_args__ = (UniqueConstraint("account_hash", "source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Tally(db.Model):
    """A change to one of the admin figures, or several folded into one: the figure `name`'s
    bucket `bucket` moves by `count` rows and `amount` of money. Written by PostgreSQL
    triggers on users, enrollments and payments, read and folded by services/admin_service.py;
    what each figure takes from a row is utils/tallies.py's `TALLIED`. SQLite keeps none."""

    __tablename__ = tallies.TABLE
    __table_args__ = (Index("ix_tallies_name_bucket", "name", "bucket"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    bucket: Mapped[str] = mapped_column(String(80))
    count: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[Decimal] = mapped_column(Numeric(20, 2))


@event.listens_for(db.metadata, "after_create")
def _tally_triggers(target, connection, **kw):
    """`create_all` (the tests, `flask db upgrade`'s models) installs the triggers migration
    0013 installs."""
    if connection.dialect.name == "postgresql":
        for statement in tallies.trigger_ddl():
            connection.exec_driver_sql(statement)
