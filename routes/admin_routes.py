"""Administration under /admin: dashboard and analytics, users, course moderation, payments
and refund requests, certificates, blocked addresses, and the audit log. Admins only; every
write is audited with who, what, when, and the values before and after."""
from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from flask import Blueprint, Response as Streamed, stream_with_context
from pydantic import Field, IPvAnyAddress
from spectree import Response
from typing_extensions import NotRequired, TypedDict

from auth import admin_required, audit, current_user
from models import (
    COURSE_STATUSES,
    GATEWAYS,
    PAYMENT_STATUSES,
    ROLES,
    Certificate,
    Payment,
    RefundRequest,
    db,
)
from utils.responses import (
    AmountOut,
    CertificateSavedResponse,
    CourseListResponse,
    CourseSavedResponse,
    Currency,
    JobAcceptedResponse,
    JobOut,
    JsonValue,
    MessageResponse,
    Money,
    PaginationOut,
    PaymentOut,
    RefundOut,
    RefundRequestOut,
    RefundRequestSavedResponse,
    Role,
    Timestamp,
    UserOut,
    UserResponse,
)
from utils.routing import accepted, sent_changes
from services.payments import refunds
from services import (
    admin_service,
    auth_service,
    certificate_service,
    course_service,
    jobs,
    notification_service,
)
from utils.errors import NotFound
from utils.pagination import page_of, paginate
from utils.pipeline import blocked_ips
from utils.pipeline.idempotency import IdempotencyHeaders, idempotent
from utils.validation import (
    PageQuery,
    StrictModel,
    document,
    errors,
    json_body,
    parse_query,
    query_args,
    validate,
)
from utils.validators import PersonName, Phone, SafeText, Url

bp = Blueprint("admin", __name__)


class BlockIn(StrictModel):
    ip_address: IPvAnyAddress
    reason: str = Field("blocked by an administrator", max_length=255)
    duration_seconds: int | None = Field(None, ge=60, le=60 * 60 * 24 * 365)


class BlockedIPOut(TypedDict):
    """A blocked client address."""

    id: int
    ip_address: str
    reason: str | None
    blocked_until: Annotated[Timestamp | None, Field(description="Null: until lifted")]
    created_at: Timestamp


class BlockedIPListResponse(TypedDict):
    """A page of the addresses blocked now, newest first."""

    blocked_ips: list[BlockedIPOut]
    pagination: PaginationOut


class BlockedIPSavedResponse(TypedDict):
    """The block."""

    message: str
    blocked_ip: BlockedIPOut


@bp.get("/blocked-ips")
@admin_required
@validate(query=PageQuery, resp=Response(HTTP_200=BlockedIPListResponse, **errors(401, 403)),
          tags=["admin"], security={"bearer": []})
def list_blocked_ips():
    """Addresses blocked now (automatically or by an admin), newest first."""
    args = query_args()
    return page_of("blocked_ips", blocked_ips.active_blocks(), args)


@bp.post("/blocked-ips")
@admin_required
@validate(json=BlockIn, resp=Response(HTTP_201=BlockedIPSavedResponse, **errors(401, 403)),
          tags=["admin"], security={"bearer": []})
def block_ip():
    """Block an address (for `duration_seconds`, or until lifted)."""
    body = json_body()
    ip = str(body.ip_address)
    audit("blocked_ip.create", "blocked_ip", None, ip_address=ip, reason=body.reason,
          duration_seconds=body.duration_seconds)
    row = blocked_ips.block_ip(ip, seconds=body.duration_seconds, reason=body.reason,
                            by_user_id=current_user().id)
    return {"message": "Address blocked", "blocked_ip": row.to_dict()}, 201


@bp.delete("/blocked-ips/<string:ip>")
@admin_required
@validate(resp=Response(HTTP_200=MessageResponse, **errors(401, 403, 404)), tags=["admin"],
          security={"bearer": []})
def unblock_ip(ip: str):
    """Lift the block of an address."""
    if not blocked_ips.unblock_ip(ip[:45]):
        raise NotFound("This address is not blocked")
    audit("blocked_ip.delete", "blocked_ip", None, ip_address=ip[:45])
    db.session.commit()
    return {"message": "Block lifted"}


# --- certificates -----------------------------------------------------------------------------

class RevokeIn(StrictModel):
    reason: str = Field(min_length=3, max_length=500)


@bp.put("/certificates/<int:certificate_id>/revoke")
@admin_required
@validate(json=RevokeIn, resp=Response(HTTP_200=CertificateSavedResponse,
                                       **errors(401, 403, 404, 409)),
          tags=["admin", "certificates"], security={"bearer": []})
def revoke_certificate(certificate_id: int):
    """Revoke a certificate; verification then says so (it never vanishes)."""
    certificate = db.session.get(Certificate, certificate_id)
    if certificate is None:
        raise NotFound("Certificate not found")
    reason = json_body().reason
    certificate_service.revoke(certificate, reason)
    audit("certificate.revoke", "certificate", certificate.id, reason=reason,
          certificate_number=certificate.certificate_number)
    db.session.commit()
    return {"message": "Certificate revoked", "certificate": certificate.to_dict()}


# --- refund requests --------------------------------------------------------------------------

class RefundQuery(PageQuery):
    status: str | None = Field(None, pattern="^(pending|approved|rejected|processed|failed)$")


class RefundDecisionIn(StrictModel):
    action: Literal["approve", "reject"]
    note: str | None = Field(None, max_length=2000)
    # Approve although a certificate has been issued for the course since the request
    # (the refund revokes it).
    override_policy: bool = False


class AdminRefundIn(StrictModel):
    reason: str = Field(min_length=3, max_length=2000)
    # What is left to refund when absent; a part of it otherwise (access stays).
    amount: Decimal | None = Field(None, gt=0, max_digits=10, decimal_places=2)
    # Refund outside REFUND_WINDOW_DAYS or after a certificate was issued.
    override_policy: bool = False


class RefundRequestListResponse(TypedDict):
    """A page of refund requests, oldest first."""

    refund_requests: list[RefundRequestOut]
    pagination: PaginationOut


class RefundDecisionResponse(TypedDict):
    """A refund request after the admin's decision, with the refund the gateway made: 200
    (201 for a direct refund) once it is recorded or the request was rejected, 202 while the
    gateway is still processing it (`refund` is null until it is recorded)."""

    message: str
    refund_request: RefundRequestOut
    refund: NotRequired[Annotated[RefundOut | None, Field(
        description="The recorded refund and its credit note (absent for a rejection)")]]


@bp.get("/refund-requests")
@admin_required
@validate(query=RefundQuery, resp=Response(HTTP_200=RefundRequestListResponse, **errors(401, 403)),
          tags=["admin", "payments"], security={"bearer": []})
def list_refund_requests():
    """Refund requests, oldest pending first."""
    args = query_args()
    query = db.select(RefundRequest).order_by(RefundRequest.created_at.asc(), RefundRequest.id)
    if args.status:
        query = query.where(RefundRequest.status == args.status)
    return page_of("refund_requests", query, args)


def _refund_answer(refund: RefundRequest, status: int):
    """Make an approved request's refund at the gateway (its approval is committed by now),
    then answer: 200/201 when recorded, 202 while the gateway is still processing it; an
    error (declined: back to pending; unknown outcome: still approved, completed by a retry,
    the gateway's webhook or the reconciler) after committing what is known."""
    outcome = refunds.execute(refund.id, source="approval")
    db.session.commit()
    if outcome.error is not None:
        raise outcome.error
    body = {"refund_request": outcome.request.to_dict(),
            "refund": outcome.refund.to_dict() if outcome.refund else None}
    if outcome.request.status == "approved":
        return {"message": "Refund approved; the gateway is still processing it", **body}, 202
    return {"message": f"Refund request {outcome.request.status}", **body}, status


@bp.put("/refund-requests/<int:request_id>")
@admin_required
@validate(json=RefundDecisionIn, headers=IdempotencyHeaders,
          resp=Response(HTTP_200=RefundDecisionResponse, HTTP_202=RefundDecisionResponse,
                        **errors(400, 401, 403, 404, 409, 422, 502, 503)),
          tags=["admin", "payments"], security={"bearer": []})
@idempotent
def decide_refund_request(request_id: int):
    """Approve (refunds through the gateway; a refund that leaves nothing paid ends the
    enrollment and revokes the certificate) or reject. Approving a request whose refund is in
    flight completes it; a certificate issued since the request needs `override_policy`."""
    body = json_body()
    admin = current_user()
    if body.action == "reject":
        refund = refunds.reject(request_id, admin, body.note)
        audit("refund_request.reject", "refund_request", refund.id,
              payment_id=refund.payment_id, note=body.note)
        db.session.commit()
        return {"message": "Refund request rejected", "refund_request": refund.to_dict()}
    refund, changed = refunds.approve(request_id, admin, body.note,
                                      override_policy=body.override_policy)
    if changed:
        audit("refund_request.approve", "refund_request", refund.id,
              payment_id=refund.payment_id, note=body.note,
              override_policy=body.override_policy)
    db.session.commit()
    return _refund_answer(refund, 200)


@bp.post("/payments/<int:payment_id>/refund")
@admin_required
@validate(json=AdminRefundIn, headers=IdempotencyHeaders,
          resp=Response(HTTP_201=RefundDecisionResponse, HTTP_202=RefundDecisionResponse,
                        **errors(400, 401, 403, 404, 409, 422, 502, 503)),
          tags=["admin", "payments"], security={"bearer": []})
@idempotent
def refund_payment(payment_id: int):
    """Refund a payment directly, in full or in part (`amount`), on the payer's behalf:
    outside REFUND_WINDOW_DAYS or after a certificate was issued only with
    `override_policy`. Refused while a refund request of the payment is open (decide it)."""
    body = json_body()
    refund = refunds.refund_directly(payment_id, current_user(), reason=body.reason,
                                     amount=body.amount, override_policy=body.override_policy)
    db.session.flush()
    audit("payment.refund", "payment", payment_id, refund_request_id=refund.id,
          amount=str(refund.amount), override_policy=body.override_policy, reason=body.reason)
    db.session.commit()
    return _refund_answer(refund, 201)


# --- dashboard and analytics ------------------------------------------------------------------

ADMIN = {"tags": ["admin"], "security": {"bearer": []}}


class MonthsQuery(StrictModel):
    months: int = Field(12, ge=1, le=60)


class PopularQuery(StrictModel):
    limit: int = Field(10, ge=1, le=100)


class CountOut(TypedDict):
    """How many, and how many of them are active."""

    total: int
    active: int


class UsersByRoleOut(TypedDict):
    """Users of each role."""

    student: CountOut
    instructor: CountOut
    admin: CountOut


class UserFiguresOut(TypedDict):
    """Users."""

    total: int
    active: int
    by_role: UsersByRoleOut


class CoursesByStatusOut(TypedDict):
    """Courses in each status."""

    draft: int
    published: int
    archived: int


class CourseFiguresOut(TypedDict):
    """Courses."""

    total: int
    by_status: CoursesByStatusOut


class EnrollmentFiguresOut(TypedDict):
    """Enrollments."""

    total: int
    completed: int
    active: int


class RevenueOut(AmountOut):
    """Revenue in one currency (completed payments)."""

    payments: int


class RevenueFiguresOut(TypedDict):
    """Revenue per currency, never added across currencies."""

    all_time: list[RevenueOut]
    this_month: list[RevenueOut]


class RegistrationOut(TypedDict):
    """A new account."""

    id: int
    full_name: str
    email: str
    role: Role
    created_at: Timestamp


class RecentEnrollmentOut(TypedDict):
    """A new enrollment."""

    id: int
    user_id: int
    user_email: str
    course_id: int
    course_title: str
    status: str
    enrolled_at: Timestamp


class RecentPaymentOut(TypedDict):
    """A new payment."""

    id: int
    user_email: str
    course_title: str
    amount: Money
    currency: Currency
    status: str
    gateway: str
    created_at: Timestamp


class RecentOut(TypedDict):
    """The latest of each, newest first."""

    registrations: list[RegistrationOut]
    enrollments: list[RecentEnrollmentOut]
    payments: list[RecentPaymentOut]


class AdminDashboardResponse(TypedDict):
    """The admin dashboard's figures."""

    users: UserFiguresOut
    courses: CourseFiguresOut
    enrollments: EnrollmentFiguresOut
    revenue: RevenueFiguresOut
    recent: RecentOut


class MonthRevenueOut(TypedDict):
    """A month's revenue, per currency."""

    month: Annotated[str, Field(examples=["2026-01"])]
    revenue: list[RevenueOut]


class RevenueAnalyticsResponse(TypedDict):
    """Revenue by month (UTC), empty months as zero."""

    months: list[str]
    currencies: list[str]
    series: list[MonthRevenueOut]


class MonthEnrollmentsOut(TypedDict):
    """A month's new enrollments and completions."""

    month: str
    enrollments: int
    completions: int


class EnrollmentAnalyticsResponse(TypedDict):
    """Enrollments and completions by month (UTC), empty months as zero."""

    months: list[str]
    series: list[MonthEnrollmentsOut]


class PopularCourseOut(TypedDict):
    """A course by its enrollments."""

    course_id: int
    title: str
    status: str
    enrollments: int
    completed: int
    completion_rate: Annotated[float, Field(description="Percent of enrollments completed")]
    revenue: list[AmountOut]


class AnalyticsResponse(TypedDict):
    """Revenue and enrollments by month, and the most popular courses."""

    revenue: RevenueAnalyticsResponse
    enrollments: EnrollmentAnalyticsResponse
    popular_courses: list[PopularCourseOut]


class PopularCoursesResponse(TypedDict):
    """The most popular courses."""

    courses: list[PopularCourseOut]


@bp.get("/dashboard")
@admin_required
@validate(resp=Response(HTTP_200=AdminDashboardResponse, **errors(401, 403)), **ADMIN)
def dashboard():
    """Users by role, courses by status, enrollments, revenue (all time and this month, per
    currency), and the latest registrations, enrollments and payments."""
    return admin_service.figures("dashboard", admin_service.dashboard)


@bp.get("/analytics")
@admin_required
@validate(query=MonthsQuery, resp=Response(HTTP_200=AnalyticsResponse, **errors(401, 403)),
          **ADMIN)
def analytics():
    """Revenue and enrollments by month (`?months=12`, empty months as zero) and the most
    popular courses."""
    months = query_args().months
    return admin_service.figures("analytics", lambda: {
        "revenue": admin_service.revenue_by_month(months),
        "enrollments": admin_service.enrollments_by_month(months),
        "popular_courses": admin_service.popular_courses()}, months)


@bp.get("/analytics/revenue")
@admin_required
@validate(query=MonthsQuery, resp=Response(HTTP_200=RevenueAnalyticsResponse,
                                           **errors(401, 403)), **ADMIN)
def analytics_revenue():
    """Revenue by month and currency (`?months=12`, empty months as zero)."""
    months = query_args().months
    return admin_service.figures("revenue", lambda: admin_service.revenue_by_month(months),
                                 months)


@bp.get("/analytics/enrollments")
@admin_required
@validate(query=MonthsQuery, resp=Response(HTTP_200=EnrollmentAnalyticsResponse,
                                           **errors(401, 403)), **ADMIN)
def analytics_enrollments():
    """Enrollments and completions by month (`?months=12`, empty months as zero)."""
    months = query_args().months
    return admin_service.figures("enrollments",
                                 lambda: admin_service.enrollments_by_month(months), months)


@bp.get("/analytics/popular-courses")
@admin_required
@validate(query=PopularQuery, resp=Response(HTTP_200=PopularCoursesResponse, **errors(401, 403)),
          **ADMIN)
def analytics_popular_courses():
    """Courses by enrollments, with completion rate and revenue."""
    limit = query_args().limit
    return {"courses": admin_service.figures(
        "popular", lambda: admin_service.popular_courses(limit), limit)}


# --- users ------------------------------------------------------------------------------------

class UserQuery(PageQuery):
    search: str | None = Field(None, max_length=100)
    role: Literal[ROLES] | None = None
    is_active: bool | None = None


class AdminUserUpdate(StrictModel):
    role: Literal[ROLES] | None = None
    is_active: bool | None = None
    first_name: PersonName | None = None
    last_name: PersonName | None = None
    phone_number: Phone | None = None
    bio: SafeText | None = Field(None, max_length=2000)
    headline: SafeText | None = Field(None, max_length=200)
    country: SafeText | None = Field(None, max_length=100)
    city: SafeText | None = Field(None, max_length=100)
    website: Url | None = None
    is_email_verified: bool | None = None
    is_phone_verified: bool | None = None


NULLABLE_USER_FIELDS = {"phone_number", "bio", "headline", "country", "city", "website"}


class UserListResponse(TypedDict):
    """A page of users, newest first."""

    users: list[UserOut]
    pagination: PaginationOut


class UserEnrollmentsOut(TypedDict):
    """A user's enrollments."""

    total: int
    by_status: dict[str, int]


class PaidOut(AmountOut):
    """Completed payments in one currency."""

    count: int


class UserPaymentsOut(TypedDict):
    """A user's payments."""

    total: int
    completed: list[PaidOut]
    by_status: dict[str, int]


class AdminUserOut(UserOut):
    """A user with their lock, enrollments, payments and courses taught."""

    locked_until: Timestamp | None
    enrollments: UserEnrollmentsOut
    payments: UserPaymentsOut
    courses_taught: int


class AdminUserResponse(TypedDict):
    """A user in detail."""

    user: AdminUserOut


@bp.get("/users")
@admin_required
@validate(query=UserQuery, resp=Response(HTTP_200=UserListResponse, **errors(401, 403)), **ADMIN)
def list_users():
    """Users, newest first; search by name, e-mail or phone; filter by role and status."""
    args = query_args()
    rows, meta = paginate(admin_service.users_query(search=args.search, role=args.role,
                                                    is_active=args.is_active),
                          args.page, args.per_page)
    return {"users": [u.to_dict(private=True) for u in rows], "pagination": meta}


@bp.get("/users/<int:user_id>")
@admin_required
@validate(resp=Response(HTTP_200=AdminUserResponse, **errors(401, 403, 404)), **ADMIN)
def get_user(user_id: int):
    """A user with their enrollment and payment summaries."""
    return {"user": admin_service.user_detail(admin_service.get_user(user_id))}


def _apply_user_change(target, before_after, action: str, message: str):
    before, after = before_after
    audit(action, "user", target.id, before=before, after=after)
    db.session.commit()
    return {"message": message, "user": target.to_dict(private=True)}


@bp.put("/users/<int:user_id>")
@admin_required
@validate(json=AdminUserUpdate, resp=Response(HTTP_200=UserResponse, **errors(401, 403, 404, 409)),
          **ADMIN)
def update_user(user_id: int):
    """Change a user's role, status or profile. An admin cannot demote or deactivate
    themselves, nor the last active admin."""
    target = admin_service.get_user(user_id)
    changes = sent_changes(json_body(), clearable=NULLABLE_USER_FIELDS)
    result = admin_service.update_user(current_user(), target, changes)
    return _apply_user_change(target, result, "user.update", "User updated")


@bp.delete("/users/<int:user_id>")
@bp.put("/users/<int:user_id>/deactivate")
@admin_required
@validate(resp=Response(HTTP_200=UserResponse, **errors(401, 403, 404, 409)), **ADMIN)
def deactivate_user(user_id: int):
    """Deactivate an account (its tokens stop working at once); nothing is deleted."""
    target = admin_service.get_user(user_id)
    result = admin_service.deactivate(current_user(), target)
    return _apply_user_change(target, result, "user.deactivate", "User deactivated")


@bp.post("/users/<int:user_id>/promote")
@admin_required
@validate(resp=Response(HTTP_200=UserResponse, **errors(401, 403, 404, 409)), **ADMIN)
def promote_user(user_id: int):
    """Make a student an instructor."""
    target = admin_service.get_user(user_id)
    result = admin_service.promote(current_user(), target)
    return _apply_user_change(target, result, "user.promote", "User promoted to instructor")


# --- courses ----------------------------------------------------------------------------------

class AdminCourseQuery(PageQuery):
    status: Literal[COURSE_STATUSES] | None = None
    instructor_id: int | None = Field(None, ge=1)
    search: str | None = Field(None, max_length=200)


class CourseStatusIn(StrictModel):
    status: Literal[COURSE_STATUSES]


def _course_page(query, args):
    return course_service.course_page(query, args.page, args.per_page)


@bp.get("/courses")
@admin_required
@validate(query=AdminCourseQuery, resp=Response(HTTP_200=CourseListResponse, **errors(401, 403)),
          **ADMIN)
def list_courses():
    """Every course, any status."""
    args = query_args()
    return _course_page(admin_service.courses_query(status=args.status,
                                                    instructor_id=args.instructor_id,
                                                    search=args.search), args)


@bp.get("/courses/pending")
@admin_required
@validate(query=PageQuery, resp=Response(HTTP_200=CourseListResponse, **errors(401, 403)), **ADMIN)
def pending_courses():
    """Drafts their instructors submitted for review, oldest request first."""
    return _course_page(admin_service.courses_query(pending=True), query_args())


def _set_course_status(course_id: int, status: str):
    course = course_service.get_course(course_id)
    before, after = admin_service.set_course_status(course, status)
    audit("course.status", "course", course.id, before={"status": before},
          after={"status": after})
    if before != after:
        notification_service.notify(
            notification_service.recipients_query(user_ids=[course.instructor_id]),
            kind="course_update", title=f"Course {after}: {course.title}",
            message=f"An administrator set \u201c{course.title}\u201d to {after}.",
            link=f"/courses/{course.id}", data={"course_id": course.id, "status": after})
    db.session.commit()
    return {"message": f"Course is {after}", "course": course.to_dict()}


@bp.put("/courses/<int:course_id>/status")
@admin_required
@validate(json=CourseStatusIn, resp=Response(HTTP_200=CourseSavedResponse, **errors(401, 403, 404)),
          **ADMIN)
def set_course_status(course_id: int):
    """Publish, unpublish (draft) or archive a course; publishing needs a lesson."""
    return _set_course_status(course_id, json_body().status)


@bp.put("/courses/<int:course_id>/publish")
@admin_required
@validate(resp=Response(HTTP_200=CourseSavedResponse, **errors(401, 403, 404)), **ADMIN)
def publish_course(course_id: int):
    """Publish a course (a draft awaiting review, typically); it needs a lesson."""
    return _set_course_status(course_id, "published")


# --- payments ---------------------------------------------------------------------------------

class AdminPaymentQuery(PageQuery):
    status: Literal[PAYMENT_STATUSES] | None = None
    user_id: int | None = Field(None, ge=1)
    course_id: int | None = Field(None, ge=1)
    gateway: Literal[GATEWAYS] | None = None
    date_from: date | None = None
    date_to: date | None = None
    format: Literal["json", "csv"] = "json"


class StatusTotalOut(TypedDict):
    """Payments of one status."""

    count: int
    amount: Money


class PaymentTotalOut(TypedDict):
    """The filter's payments in one currency."""

    currency: Currency
    count: int
    amount: Money
    by_status: dict[str, StatusTotalOut]


class AdminPaymentListResponse(TypedDict):
    """A page of payments, newest first, and the totals of the whole filter."""

    payments: list[PaymentOut]
    pagination: PaginationOut
    totals: list[PaymentTotalOut]


@bp.get("/payments")
@admin_required
@document(query=AdminPaymentQuery, resp=Response(HTTP_200=AdminPaymentListResponse,
                                                 **errors(401, 403, 422)),
          media={200: {"text/csv": "With `?format=csv`: every payment of the filter"}}, **ADMIN)
def list_payments():
    """Payments with filters and the totals of the filter; `?format=csv` streams them all.

    The totals of a filter without a user or a course sum a large part of the table: they are
    kept for ADMIN_STATS_CACHE_SECONDS, like the dashboard's figures.
    (Documented, not wrapped: spectree's wrapper would read and JSON-check the CSV stream.)"""
    args = parse_query(AdminPaymentQuery)
    filters = {"status": args.status, "user_id": args.user_id, "course_id": args.course_id,
               "gateway": args.gateway, "date_from": args.date_from, "date_to": args.date_to}
    conditions = admin_service.payment_filters(**filters)
    if args.format == "csv":
        return Streamed(stream_with_context(admin_service.payments_csv(conditions)),
                        mimetype="text/csv", headers={
                            "Content-Disposition": 'attachment; filename="payments.csv"',
                            "Cache-Control": "no-store"})
    query = (db.select(Payment).where(*conditions).options(db.joinedload(Payment.course))
             .order_by(Payment.created_at.desc(), Payment.id.desc()))
    rows, meta = paginate(query, args.page, args.per_page)
    return {"payments": [p.to_dict() for p in rows], "pagination": meta,
            "totals": admin_service.payment_totals(conditions, filters)}


# --- audit log --------------------------------------------------------------------------------

class AuditQuery(PageQuery):
    actor_id: int | None = Field(None, ge=1)
    action: str | None = Field(None, max_length=100)
    target_type: str | None = Field(None, max_length=50)
    target_id: int | None = Field(None, ge=1)


class AuditEntryOut(TypedDict):
    """An admin's write: who, what, to which object, from where."""

    id: int
    actor_id: int | None
    action: Annotated[str, Field(examples=["user.update"])]
    target_type: str | None
    target_id: int | None
    details: Annotated[dict[str, JsonValue] | None, Field(
        description="Before and after, and more")]
    ip_address: str | None
    request_id: str | None
    created_at: Timestamp


class AuditLogResponse(TypedDict):
    """A page of the audit log, newest first."""

    entries: list[AuditEntryOut]
    pagination: PaginationOut


class JobListResponse(TypedDict):
    """A page of background jobs, newest first."""

    jobs: list[JobOut]
    pagination: PaginationOut


@bp.get("/audit-log")
@admin_required
@validate(query=AuditQuery, resp=Response(HTTP_200=AuditLogResponse, **errors(401, 403)), **ADMIN)
def audit_log():
    """Every admin write: who, what, when, before and after."""
    args = query_args()
    rows, meta = paginate(admin_service.audit_query(
        actor_id=args.actor_id, action=args.action, target_type=args.target_type,
        target_id=args.target_id), args.page, args.per_page)
    return {"entries": [row.to_dict() for row in rows], "pagination": meta}


# --- background jobs ----------------------------------------------------------------------------

@bp.get("/jobs/failed")
@admin_required
@validate(query=PageQuery, resp=Response(HTTP_200=JobListResponse, **errors(401, 403)), **ADMIN)
def failed_jobs():
    """Jobs that failed for good (after their retries), newest first."""
    args = query_args()
    return page_of("jobs", jobs.failed_query(), args)


@bp.post("/jobs/<string:job_id>/retry")
@admin_required
@validate(resp=Response(HTTP_202=JobAcceptedResponse, **errors(401, 403, 404, 409)), **ADMIN)
def retry_job(job_id: str):
    """Run a failed job again (an e-mail fan-out resumes where it stopped)."""
    job = jobs.retry(jobs.visible(job_id, current_user()))
    audit("job.retry", "job", None, job_id=job.id, kind=job.kind)
    db.session.commit()
    return accepted(jobs.launch(job), "Job queued again")


class ReconcileIn(StrictModel):
    older_than_minutes: int | None = Field(None, ge=0, le=60 * 24 * 30)


@bp.post("/payments/reconcile")
@admin_required
@validate(json=ReconcileIn, resp=Response(HTTP_202=JobAcceptedResponse, **errors(401, 403)),
          **ADMIN)
def reconcile_payments():
    """Ask the gateways about payments still pending and settle or expire them, and complete
    approved refunds still in flight (a job; the worker also runs it every
    JOBS_TICK_SECONDS)."""
    body = json_body()
    job = jobs.start("payments.reconcile", {"older_than_minutes": body.older_than_minutes},
                     user_id=current_user().id)
    audit("payments.reconcile", "job", None, job_id=job.id)
    db.session.commit()
    return accepted(jobs.launch(job), "Reconciliation started")


# --- sign-in locks ----------------------------------------------------------------------------

@bp.post("/users/<int:user_id>/unlock")
@admin_required
@validate(resp=Response(HTTP_200=UserResponse, **errors(401, 403, 404)), **ADMIN)
def unlock_user(user_id: int):
    """Lift every sign-in lock of an account, from every source, and its failure counts."""
    target = admin_service.get_user(user_id)
    lifted = auth_service.unlock(target)
    audit("user.unlock", "user", target.id, locks_lifted=lifted)
    db.session.commit()
    return {"message": "Sign-in locks lifted", "user": target.to_dict(private=True)}
