"""What the API answers with: the shapes of its resources and of the bodies more than one
blueprint returns. Each is a TypedDict describing the dict a model's `to_dict` (or a service)
builds; a route names the bodies it answers with in its declaration
(`validate(resp=Response(HTTP_200=CourseResponse, **errors(404)))`, utils/validation.py), and
that declaration both shapes the answer and documents it. Bodies used by one blueprint only live
beside its routes.

Conventions: a resource shape ends in `Out`, an answer's body in `Response`; every key is
present (nullable ones are `X | None`) unless `NotRequired` says when it is absent; times are
ISO-8601 UTC strings with an offset, money a number with two decimals beside its currency.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SerializeAsAny
from typing_extensions import NotRequired, TypedDict

from models import (
    CERTIFICATE_STATUSES,
    COURSE_STATUSES,
    DIFFICULTIES,
    ENROLLMENT_STATUSES,
    GATEWAYS,
    LIVE_SESSION_STATUSES,
    MODES_OF_CONDUCT,
    NOTIFICATION_KINDS,
    PAYMENT_STATUSES,
    PLATFORMS,
    REFUND_STATUSES,
    RESOURCE_KINDS,
    ROLES,
)

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"},
                                 examples=["2026-01-31T09:30:00+00:00"])]
Day = Annotated[str, Field(json_schema_extra={"format": "date"}, examples=["2026-01-31"])]
Money = Annotated[float, Field(description="An amount with two decimals, in `currency`",
                               examples=[49.99])]
Currency = Annotated[str, Field(description="ISO 4217 code", examples=["USD"])]
Id = Annotated[int, Field(examples=[42])]
# Free-form data (a notification's ids, a job's counts, an audit entry's before and after):
# JSON values nested three deep at most, said so in the schema (a recursive type would be
# exact, but TypeScript cannot use the one openapi-typescript generates for it).
JsonScalar = str | int | float | bool | None
JsonNested = JsonScalar | list[JsonScalar] | dict[str, JsonScalar]
JsonValue = JsonScalar | list[JsonNested] | dict[str, JsonNested]
Role = Literal[ROLES]


class ErrorResponse(TypedDict):
    """The one error shape: every 4xx and 5xx answer of the API, whoever raised it."""

    error: Annotated[str, Field(description="What went wrong, for people",
                                examples=["Course not found"])]
    code: Annotated[str, Field(description="What went wrong, for programs (stable)",
                               examples=["not_found"])]
    details: NotRequired[Annotated[dict[str, JsonValue], Field(
        description="More about it: for 422, each invalid field and its message",
        examples=[{"email": "value is not a valid email address"}])]]


class MessageResponse(TypedDict):
    """What was done, in words."""

    message: Annotated[str, Field(examples=["Course deleted"])]


class PaginationOut(TypedDict):
    """Where a page sits in its list: `?page=1&per_page=20` (per_page at most 100)."""

    page: Annotated[int, Field(examples=[1])]
    per_page: Annotated[int, Field(examples=[20])]
    total: Annotated[int, Field(
        description="Items in the whole list: exact up to 1,000; above that PostgreSQL's "
                    "estimate (the table statistics), and `total_is_estimate` is true",
        examples=[57])]
    pages: Annotated[int, Field(description="Pages of `total` (estimated with it)",
                                examples=[3])]
    has_next: bool
    has_prev: bool
    total_is_estimate: NotRequired[Annotated[bool, Field(
        description="Present, and true, when `total` (and so `pages`) is an estimate: a list "
                    "of more than 1,000 items is not counted exactly on every page")]]


# --- people -----------------------------------------------------------------------------------

class UserPublicOut(TypedDict):
    """A user as others see them (an instructor's card, a course's author)."""

    id: Id
    first_name: Annotated[str, Field(examples=["Ada"])]
    last_name: Annotated[str, Field(examples=["Lovelace"])]
    full_name: Annotated[str, Field(examples=["Ada Lovelace"])]
    role: Role
    bio: str | None
    headline: str | None
    profile_picture: Annotated[str | None, Field(
        description="A path under /static/uploads/", examples=["/static/uploads/avatars/x.png"])]


class UserOut(UserPublicOut):
    """A user as they (and admins) see themselves."""

    email: Annotated[str, Field(examples=["ada@example.com"])]
    phone_number: Annotated[str | None, Field(description="E.164", examples=["+14155550123"])]
    is_active: bool
    is_email_verified: bool
    is_phone_verified: bool
    date_of_birth: Day | None
    country: str | None
    city: str | None
    website: str | None
    has_password: Annotated[bool, Field(
        description="False for accounts that sign in with Google only")]
    last_login_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp


class UserResponse(TypedDict):
    """The user, and what was done when something was."""

    user: UserOut
    message: NotRequired[str]


# --- the catalog ------------------------------------------------------------------------------

class MasterCategoryOut(TypedDict):
    """A top-level category of the catalog."""

    id: Id
    name: Annotated[str, Field(examples=["Data Science"])]
    slug: Annotated[str, Field(examples=["data-science"])]
    description: str | None
    icon_url: str | None
    position: int
    is_active: bool
    created_at: Timestamp
    updated_at: Timestamp


class SubcategoryOut(TypedDict):
    """A category inside a master category; courses belong to one."""

    id: Id
    master_category_id: int
    name: Annotated[str, Field(examples=["Machine Learning"])]
    slug: Annotated[str, Field(examples=["machine-learning"])]
    description: str | None
    position: int
    is_active: bool
    created_at: Timestamp
    updated_at: Timestamp


class SubcategoryListResponse(TypedDict):
    """A page of subcategories, in display order."""

    subcategories: list[SubcategoryOut]
    pagination: PaginationOut


class SubcategoryRefOut(TypedDict):
    """A course's subcategory, in lists."""

    id: Id
    name: str
    master_category_id: int


class CourseOut(TypedDict):
    """A course's own fields."""

    id: Id
    title: Annotated[str, Field(examples=["Python for Data Analysis"])]
    slug: Annotated[str, Field(examples=["python-for-data-analysis"])]
    short_description: str | None
    description: str | None
    price: Money
    currency: Currency
    is_free: bool
    difficulty: Literal[DIFFICULTIES]
    duration_hours: Annotated[float | None, Field(examples=[12.5])]
    learning_outcomes: list[str]
    language: Annotated[str, Field(examples=["English"])]
    mode_of_conduct: Literal[MODES_OF_CONDUCT]
    status: Literal[COURSE_STATUSES]
    awaiting_review: Annotated[bool, Field(
        description="A draft its instructor submitted for review, not yet published by an "
                    "admin")]
    review_requested_at: Annotated[Timestamp | None, Field(
        description="When the instructor submitted the draft for review (while it awaits)")]
    subcategory_id: int | None
    instructor_id: int
    thumbnail_url: str | None
    published_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp


class CourseSummaryOut(CourseOut):
    """A course in lists: its fields, its instructor's card and its subcategory."""

    instructor: UserPublicOut | None
    subcategory: SubcategoryRefOut | None


class CourseRefOut(TypedDict):
    """Another course, named (a prerequisite)."""

    id: Id
    title: str
    slug: str


class CourseListResponse(TypedDict):
    """A page of courses."""

    courses: list[CourseSummaryOut]
    pagination: PaginationOut


class CourseSavedResponse(TypedDict):
    """A course after a change."""

    message: str
    course: CourseOut


class ModuleOut(TypedDict):
    """A module: an ordered group of lessons."""

    id: Id
    course_id: int
    title: str
    description: str | None
    position: int
    created_at: Timestamp
    updated_at: Timestamp


class LessonResourceOut(TypedDict):
    """A file attached to a lesson."""

    id: Id
    lesson_id: int
    title: str
    description: str | None
    original_filename: str
    mime_type: Annotated[str, Field(examples=["application/pdf"])]
    file_type: Literal[RESOURCE_KINDS]
    file_size: Annotated[int, Field(description="Bytes")]
    position: int
    download_url: Annotated[str, Field(examples=["/api/v1/files/download/7"])]
    created_at: Timestamp
    updated_at: Timestamp


class ModuleSavedResponse(TypedDict):
    """A module after a change."""

    message: str
    module: ModuleOut


class ModuleListSavedResponse(TypedDict):
    """A course's modules in their new order."""

    message: str
    modules: list[ModuleOut]


class PrerequisiteOut(CourseRefOut):
    """A course to complete before enrolling."""

    status: Literal[COURSE_STATUSES]


class PrerequisiteListResponse(TypedDict):
    """The courses a student must complete before enrolling in this one."""

    course_id: int
    prerequisites: list[PrerequisiteOut]


class PrerequisitesSavedResponse(PrerequisiteListResponse):
    """The prerequisites after a change."""

    message: str


class LessonOut(TypedDict):
    """A lesson. `content` and `video_url` are null for readers who only see the outline
    (not enrolled), unless the lesson is a preview."""

    id: Id
    module_id: int
    title: str
    content: str | None
    video_url: str | None
    duration_minutes: int | None
    position: int
    is_preview: bool
    created_at: Timestamp
    updated_at: Timestamp


class LessonSavedResponse(TypedDict):
    """A lesson after a change."""

    message: str
    lesson: LessonOut


class LessonListSavedResponse(TypedDict):
    """A module's lessons in their new order."""

    message: str
    lessons: list[LessonOut]


class LessonResourceSavedResponse(TypedDict):
    """A lesson resource after a change."""

    message: str
    resource: LessonResourceOut


class OutlineLessonOut(LessonOut):
    """A lesson in a course's outline, with its resources (those the reader may open)."""

    resources: list[LessonResourceOut]
    completed: Annotated[bool | None, Field(
        description="Whether the reader completed it: for a reader enrolled in the course; "
                    "null for anyone else")]


class OutlineModuleOut(ModuleOut):
    """A module in a course's outline."""

    lessons: list[OutlineLessonOut]


Access = Annotated[Literal["admin", "owner", "enrolled", "guest"], Field(
    description="What the reader may see: everything (admin, owner, enrolled) or the outline "
                "(guest: anyone else, signed in or not)")]


class CourseDetailOut(CourseSummaryOut):
    """A course with its outline, as the reader may see it."""

    modules: list[OutlineModuleOut]
    lesson_count: int
    prerequisites: list[CourseRefOut]
    access: Access
    has_full_access: bool


class CourseResponse(TypedDict):
    """A course with its outline."""

    course: CourseDetailOut


# --- enrollment and progress ------------------------------------------------------------------

class EnrollmentOut(TypedDict):
    """An enrollment: who, which course, and where it stands."""

    id: Id
    user_id: int
    course_id: int
    status: Literal[ENROLLMENT_STATUSES]
    progress_percent: Annotated[float, Field(description="0 to 100; 100 once completed",
                                             examples=[62.5])]
    payment_id: int | None
    enrolled_at: Timestamp
    started_at: Timestamp | None
    last_accessed_at: Timestamp | None
    completed_at: Timestamp | None
    cancelled_at: Timestamp | None


class EnrollmentProgressOut(EnrollmentOut):
    """An enrollment with its lesson counts (a completion stands when lessons are added
    later; the counts still tell the truth)."""

    completed_lessons: int
    total_lessons: int


class EnrollmentWithCourseOut(EnrollmentProgressOut):
    """An enrollment with its progress and its course."""

    course: CourseSummaryOut


class EnrollmentListResponse(TypedDict):
    """A page of enrollments with their courses, newest first."""

    enrollments: list[EnrollmentWithCourseOut]
    pagination: PaginationOut


class LessonProgressOut(TypedDict):
    """A lesson's progress in an enrollment (started_at is null until it was opened)."""

    lesson_id: int
    completed: bool
    completed_at: Timestamp | None
    watch_time_seconds: Annotated[int, Field(description="The furthest point reached")]
    started_at: Timestamp | None
    last_accessed_at: Timestamp | None


# --- certificates -----------------------------------------------------------------------------

class CertificateOut(TypedDict):
    """A certificate of completion."""

    id: Id
    certificate_number: Annotated[str, Field(examples=["AIFA-12-34-9F2C41D0AB"])]
    user_id: int
    course_id: int
    holder_name: str
    course_title: str
    instructor_name: str | None
    completion_date: Day
    status: Literal[CERTIFICATE_STATUSES]
    sha256: Annotated[str | None, Field(description="SHA-256 of the issued PDF")]
    issued_at: Timestamp
    revoked_at: Timestamp | None
    download_url: Annotated[str, Field(description="The PDF (the holder or an admin)",
                                       examples=["/api/v1/certificates/5/download"])]
    verify_url: Annotated[str, Field(
        description="The public verification page anyone can open (the PDF's QR code)",
        examples=["https://academy.example.com/verify/AIFA-12-34-9F2C41D0AB"])]
    credential_download_url: Annotated[str, Field(
        description="The signed Open Badges 3.0 credential as a file to keep or import into a "
                    "wallet (the holder or an admin)",
        examples=["/api/v1/certificates/5/credential"])]
    credential_url: Annotated[str, Field(
        description="The public, signed Open Badges 3.0 credential (its `id` points here)",
        examples=["/api/v1/credentials/AIFA-12-34-9F2C41D0AB"])]
    pdf_signed: Annotated[bool, Field(
        description="The PDF carries the academy's signature (false: issued before PDFs were "
                    "signed; checked by its SHA-256)")]


class CertificateSavedResponse(TypedDict):
    """A certificate after it was issued (or found already issued), or revoked."""

    message: str
    certificate: CertificateOut


class CertificateListResponse(TypedDict):
    """A page of certificates, newest first."""

    certificates: list[CertificateOut]
    pagination: PaginationOut


# --- verifiable credentials -------------------------------------------------------------------
# The W3C documents we sign (services/credentials/): their shapes are the specifications'
# (Verifiable Credentials 2.0, Open Badges 3.0, Data Integrity, Bitstring Status List), typed
# here with the fields we put in. JSON-LD keys such as `@context` are no Python names, so these
# TypedDicts are written in the functional form.

JSON_LD = "application/ld+json"
Context = Annotated[list[str], Field(description="The JSON-LD contexts, in order",
                                     examples=[["https://www.w3.org/ns/credentials/v2"]])]
Did = Annotated[str, Field(description="The academy's did:web identifier",
                           examples=["did:web:academy.example.com"])]


class DataIntegrityProofOut(TypedDict):
    """The Data Integrity proof (eddsa-rdfc-2022) that signs a credential."""

    type: Literal["DataIntegrityProof"]
    cryptosuite: Literal["eddsa-rdfc-2022"]
    created: Timestamp
    verificationMethod: Annotated[str, Field(
        description="The key in the academy's DID document that signed it",
        examples=["did:web:academy.example.com#z6Mk..."])]
    proofPurpose: Literal["assertionMethod"]
    proofValue: Annotated[str, Field(description="The Ed25519 signature, multibase base58")]


class ImageOut(TypedDict):
    """An image (a URL or a data: URL)."""

    id: str
    type: Literal["Image"]


class IssuerProfileOut(TypedDict):
    """The academy as the credential's issuer (an Open Badges `Profile`)."""

    id: Did
    type: list[str]
    name: str
    url: str
    image: ImageOut


class CreatorProfileOut(TypedDict):
    """The course's instructor as the achievement's creator (an opaque id, their name)."""

    id: Annotated[str, Field(examples=["urn:uuid:6f0c1e1a-1d1b-5c39-9a57-0b1f2a3c4d5e"])]
    type: list[str]
    name: str


class CriteriaOut(TypedDict):
    """What earning the achievement takes."""

    narrative: str


class AchievementOut(TypedDict):
    """The course, as an Open Badges `Achievement`."""

    id: str
    type: list[str]
    achievementType: Literal["CertificateOfCompletion"]
    name: str
    description: str
    criteria: CriteriaOut
    creator: NotRequired[CreatorProfileOut]


class IdentityObjectOut(TypedDict):
    """The learner, named by a salted SHA-256 of their e-mail address (never the address)."""

    type: Literal["IdentityObject"]
    identityHash: Annotated[str, Field(examples=["sha256$1f0e..."])]
    identityType: Literal["emailAddress"]
    hashed: bool
    salt: str


class AchievementSubjectOut(TypedDict):
    """Who earned what: the credential's subject."""

    type: list[str]
    identifier: list[IdentityObjectOut]
    licenseNumber: Annotated[str, Field(description="The certificate number",
                                        examples=["AIFA-12-34-9F2C41D0AB"])]
    achievement: AchievementOut


class StatusListEntryOut(TypedDict):
    """Where the credential's revocation bit is (a BitstringStatusListEntry)."""

    id: str
    type: Literal["BitstringStatusListEntry"]
    statusPurpose: Literal["revocation"]
    statusListIndex: Annotated[str, Field(description="The bit's index, as a string",
                                          examples=["40213"])]
    statusListCredential: Annotated[str, Field(
        description="The signed status list (GET /api/v1/credentials/status/{list_id})")]


OpenBadgeCredentialOut = TypedDict("OpenBadgeCredentialOut", {
    "@context": Context,
    "id": Annotated[str, Field(description="Where the credential is published",
                               examples=["https://academy.example.com/api/v1/credentials/"
                                         "AIFA-12-34-9F2C41D0AB"])],
    "type": Annotated[list[str], Field(examples=[["VerifiableCredential",
                                                  "OpenBadgeCredential"]])],
    "name": str,
    "description": str,
    "issuer": IssuerProfileOut,
    "validFrom": Timestamp,
    "awardedDate": Timestamp,
    "credentialSubject": AchievementSubjectOut,
    "credentialStatus": StatusListEntryOut,
    "proof": DataIntegrityProofOut,
})
OpenBadgeCredentialOut.__doc__ = (
    "A certificate as a signed Open Badges 3.0 credential (W3C Verifiable Credentials 2.0), "
    "as issued: verifiable without trusting this server.")
# Sent as stored: a credential issued by an earlier version may carry other fields, and its
# signature covers all of them, so nothing in it is dropped on the way out.
SignedCredential = SerializeAsAny[OpenBadgeCredentialOut]


# --- payments ---------------------------------------------------------------------------------

class PaymentOut(TypedDict):
    """A payment through a gateway."""

    id: Id
    user_id: int
    course_id: int
    gateway: Literal[GATEWAYS]
    gateway_order_id: str | None
    gateway_payment_id: str | None
    amount: Money
    currency: Currency
    status: Literal[PAYMENT_STATUSES]
    refunded_amount: Money
    refund_status: Annotated[Literal["none", "partial", "full"], Field(
        description="How much of the payment has been refunded")]
    failure_reason: str | None
    invoice_number: str | None
    paid_at: Timestamp | None
    refunded_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp


class RefundRequestOut(TypedDict):
    """A student's request for a refund, and the admin's decision."""

    id: Id
    payment_id: int
    user_id: int
    reason: str
    status: Literal[REFUND_STATUSES]
    amount: Money
    admin_note: str | None
    gateway_refund_id: Annotated[str | None, Field(
        description="The gateway's id of the refund once it was made there")]
    decided_at: Timestamp | None
    processed_at: Timestamp | None
    created_at: Timestamp


class RefundOut(TypedDict):
    """One refund as the gateway made it, recorded once, with its credit note."""

    id: Id
    payment_id: int
    refund_request_id: Annotated[int | None, Field(
        description="The request it answered (null: made at the gateway's side)")]
    gateway_refund_id: str
    amount: Money
    currency: Currency
    credit_note_number: Annotated[str, Field(examples=["CN-2026-000001"])]
    credit_note_url: Annotated[str, Field(
        description="The credit note's PDF (the payer or an admin)",
        examples=["/api/v1/payments/9/refunds/3/credit-note"])]
    created_at: Timestamp


class RefundRequestSavedResponse(TypedDict):
    """A refund request after it was made or decided."""

    message: str
    refund_request: RefundRequestOut


# --- live sessions, notifications, jobs -------------------------------------------------------

class AttendanceOut(TypedDict):
    """Who joined a live session (its hosts see this)."""

    user_id: int
    name: str
    first_joined_at: Timestamp
    last_joined_at: Timestamp
    join_count: int


class LiveSessionOut(TypedDict):
    """A live class. The meeting's URL, id and password are there for its hosts (the
    course's instructor, admins) and in the answer of /join; never for anyone else."""

    id: Id
    course_id: int
    instructor_id: int
    title: str
    description: str | None
    start_time: Timestamp
    end_time: Timestamp
    duration_minutes: int
    platform: Literal[PLATFORMS]
    status: Literal[LIVE_SESSION_STATUSES]
    recording_url: str | None
    cancelled_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    meeting_url: NotRequired[str | None]
    meeting_id: NotRequired[str | None]
    meeting_password: NotRequired[str | None]
    attendance: NotRequired[Annotated[list[AttendanceOut], Field(
        description="For the hosts, in the answer for one session")]]


class NotificationOut(TypedDict):
    """An in-app notification."""

    id: Id
    kind: Literal[NOTIFICATION_KINDS]
    title: str
    message: str
    link: Annotated[str | None, Field(description="A path in the SPA", examples=["/courses/3"])]
    data: Annotated[dict[str, JsonValue] | None, Field(
        description="Ids the notification is about", examples=[{"course_id": 3}])]
    is_read: bool
    read_at: Timestamp | None
    created_at: Timestamp


JobStatus = Literal["queued", "started", "retrying", "finished", "failed"]


class JobOut(TypedDict):
    """A background job: what was asked, and how it went."""

    id: Annotated[str, Field(examples=["0b6f2f7e-4a43-4a5b-9a8e-2f1d6f0c9e11"])]
    kind: Annotated[str, Field(examples=["certificates.bulk_issue"])]
    status: JobStatus
    result: Annotated[dict[str, JsonValue] | None, Field(
        description="What the job reports (counts), once it ran", examples=[{"issued": 12}])]
    error: str | None
    attempts: int
    created_by: int | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


class JobAcceptedResponse(TypedDict):
    """202: the work goes on as a background job; follow it at the `Location` header
    (GET /api/v1/jobs/{job_id})."""

    message: str
    job: JobOut
    recipients: NotRequired[Annotated[int, Field(description="Notifications sent")]]


class AmountOut(TypedDict):
    """An amount in one currency."""

    currency: Currency
    amount: Money
