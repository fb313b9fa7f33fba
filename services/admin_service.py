"""Administration: the dashboard, analytics, user management, course moderation, payments.

The counts and sums behind the dashboard and analytics (users by role, enrollments by status,
month and course, revenue by month, currency and course) are read from their tallies
(utils/tallies.py): on PostgreSQL, running totals its triggers keep as the rows change, so a
recomputation reads about as many rows as there are buckets, not as many as there are learners;
on SQLite, the same sums over the tables. Python only shapes them and fills the months that had
nothing with zero. Revenue counts completed payments only: refunded ones are excluded.

The dashboard and analytics read from DATABASE_REPLICA_URL when it is set and are kept in Redis
for ADMIN_STATS_CACHE_SECONDS: while one worker recomputes an expired copy, the others answer
from it.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import redis
from flask import current_app
from sqlalchemy import create_engine, func, or_, select, text
from sqlalchemy.orm import Session

from config import database_engine_options, ping_when_idle
from models import (
    AuditLog,
    Course,
    Enrollment,
    Payment,
    Tally,
    User,
    db,
)
from services import auth_service, catalog_service, course_service
from utils.errors import Conflict, NotFound
from utils import tallies
from utils.helpers import iso, money, utcnow
from utils.pipeline import redis_client

REVENUE_STATUSES = tallies.REVENUE_STATUSES
# Appended tally rows a read adds up, beyond two per bucket, before it folds them.
FOLD_AFTER = 1000
log = logging.getLogger("lms.admin")


# --- where the figures are read, and how long they are kept -----------------------------------

_reader: ContextVar[Session | None] = ContextVar("admin_reader", default=None)


def reader():
    """The session the figures read through: the replica's inside `on_replica()`."""
    return _reader.get() or db.session


def _replica_engine():
    url = current_app.config.get("DATABASE_REPLICA_URL")
    if not url:
        return None
    engine = current_app.extensions.get("lms_replica_engine")
    if engine is None:
        engine = create_engine(url, **database_engine_options(url))
        ping_when_idle(engine)
        current_app.extensions["lms_replica_engine"] = engine
    return engine


@contextmanager
def on_replica():
    engine = _replica_engine()
    if engine is None:
        yield
        return
    with Session(engine) as session:
        token = _reader.set(session)
        try:
            yield
        finally:
            _reader.reset(token)


def figures(name: str, compute: Callable[[], dict | list], *params) -> dict | list:
    """`compute()` on the replica (if any), its JSON kept in Redis for ADMIN_STATS_CACHE_SECONDS.
    An expired copy is served while a single worker (a Redis lock) recomputes it."""
    seconds = current_app.config["ADMIN_STATS_CACHE_SECONDS"]
    client = redis_client.get() if seconds > 0 else None
    if client is None:
        with on_replica():
            return compute()
    key = "lms:admin-figures:" + ":".join([name, *map(str, params)])
    try:
        cached = client.get(key)
        if cached is not None:
            entry = json.loads(cached)
            fresh = entry["at"] + seconds > time.time()
            if fresh or not client.set(key + ":lock", "1", nx=True, ex=60):
                return entry["value"]
    except redis.RedisError as exc:
        log.warning("admin figures cache unavailable: %s", exc)
        client = None
    with on_replica():
        value = compute()
    if client is not None:
        try:
            # Kept ten times longer than fresh: the stale copy others serve during a recompute.
            client.set(key, json.dumps({"at": time.time(), "value": value}), ex=seconds * 10)
            client.delete(key + ":lock")
        except redis.RedisError as exc:
            log.warning("admin figures not cached: %s", exc)
    return value


# --- the tallies the figures read ------------------------------------------------------------

def tallied(names) -> dict[str, dict[str, tuple[int, Decimal]]]:
    """The buckets of the figures `names` (utils/tallies.py): {name: {bucket: (count,
    amount)}}, empty buckets left out. PostgreSQL reads the running totals its triggers keep
    (about as many rows as buckets, whatever the number of learners: folded here once the rows
    appended since the last folding outnumber them); SQLite adds up the tables."""
    session = reader()
    dialect = session.get_bind().dialect.name
    statement = (tallies.read_sql(names) if dialect == "postgresql"
                 else tallies.computed_sql(dialect, names))
    found: dict[str, dict[str, tuple[int, Decimal]]] = {name: {} for name in names}
    buckets = rows = 0
    for name, bucket, count, amount, added in session.execute(text(statement)):
        buckets, rows = buckets + 1, rows + added
        if count or amount:
            found[name][bucket] = (int(count), Decimal(amount or 0))
    if dialect == "postgresql" and rows > 2 * buckets + FOLD_AFTER:
        compact_tallies()
    return found


def compact_tallies() -> int:
    """Fold the tallies' appended rows into one per bucket (the worker's tick, and a read that
    added up many): the rows left."""
    return _on_primary([tallies.compact_sql])


def recount_tallies() -> int:
    """Rebuild the tallies from the tables (`flask figures recount`: after a restore that
    skipped the triggers, say), writers of users, enrollments and payments waiting meanwhile;
    the rows written."""
    return _on_primary(tallies.recount_sql())


def _on_primary(statements: list[str]) -> int:
    """Run `statements` in a transaction of their own on the primary, then count the tallies'
    rows (PostgreSQL; SQLite keeps none: 0)."""
    engine = db.engine
    if engine.dialect.name != "postgresql":
        return 0
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
        return conn.scalar(select(func.count(Tally.id)))


def _split(bucket: str) -> tuple[str, str]:
    first, _, second = bucket.rpartition("|")
    return first, second


def _by_currency(buckets) -> list[dict]:
    """Revenue rows by currency from (currency, (count, amount)) pairs, currency order, the
    currencies with no payment left out."""
    totals: dict[str, list] = {}
    for currency, (count, amount) in buckets:
        entry = totals.setdefault(currency, [0, Decimal(0)])
        entry[0] += count
        entry[1] += amount
    return [{"currency": currency, "amount": money(amount), "payments": count}
            for currency, (count, amount) in sorted(totals.items()) if count]


# --- months -----------------------------------------------------------------------------------

def last_months(count: int, today: date | None = None) -> list[str]:
    today = today or utcnow().date()
    year, month = today.year, today.month
    keys = []
    for _ in range(count):
        keys.append(f"{year:04d}-{month:02d}")
        month -= 1
        if month == 0:
            year, month = year - 1, 12
    return list(reversed(keys))


# --- dashboard --------------------------------------------------------------------------------

def dashboard(recent: int = 5) -> dict:
    found = tallied(("users", "enrollments", "revenue"))
    by_role: dict[str, dict[str, int]] = {}
    for bucket, (count, _) in found["users"].items():
        role, state = _split(bucket)
        entry = by_role.setdefault(role, {"total": 0, "active": 0})
        entry["total"] += count
        entry["active"] += count if state == "active" else 0
    courses = dict(reader().execute(
        select(Course.status, func.count(Course.id)).group_by(Course.status)).all())
    statuses = {status: count for status, (count, _) in found["enrollments"].items()}
    this_month = last_months(1)[0]
    revenue = [(_split(bucket), totals) for bucket, totals in found["revenue"].items()]
    latest_users = reader().scalars(select(User).order_by(User.created_at.desc(), User.id.desc())
                                      .limit(recent)).all()
    latest_enrollments = reader().execute(
        select(Enrollment, User.email, Course.title)
        .join(User, User.id == Enrollment.user_id).join(Course, Course.id == Enrollment.course_id)
        .order_by(Enrollment.enrolled_at.desc(), Enrollment.id.desc()).limit(recent)).all()
    latest_payments = reader().execute(
        select(Payment, User.email, Course.title)
        .join(User, User.id == Payment.user_id).join(Course, Course.id == Payment.course_id)
        .order_by(Payment.created_at.desc(), Payment.id.desc()).limit(recent)).all()
    return {
        "users": {"total": sum(v["total"] for v in by_role.values()),
                  "active": sum(v["active"] for v in by_role.values()),
                  "by_role": {role: by_role.get(role, {"total": 0, "active": 0})
                              for role in ("student", "instructor", "admin")}},
        "courses": {"total": sum(courses.values()),
                    "by_status": {s: courses.get(s, 0)
                                  for s in ("draft", "published", "archived")}},
        "enrollments": {"total": sum(statuses.values()),
                        "completed": statuses.get("completed", 0),
                        "active": statuses.get("active", 0)},
        # A completed payment with no paid_at counts in all time, in no month.
        "revenue": {"all_time": _by_currency((currency, totals)
                                             for (_, currency), totals in revenue),
                    "this_month": _by_currency((currency, totals)
                                               for (month, currency), totals in revenue
                                               if month and month >= this_month)},
        "recent": {
            "registrations": [{"id": u.id, "full_name": u.full_name, "email": u.email,
                               "role": u.role, "created_at": iso(u.created_at)}
                              for u in latest_users],
            "enrollments": [{"id": e.id, "user_id": e.user_id, "user_email": email,
                             "course_id": e.course_id, "course_title": title,
                             "status": e.status, "enrolled_at": iso(e.enrolled_at)}
                            for e, email, title in latest_enrollments],
            "payments": [{"id": p.id, "user_email": email, "course_title": title,
                          "amount": money(p.amount), "currency": p.currency, "status": p.status,
                          "gateway": p.gateway, "created_at": iso(p.created_at)}
                         for p, email, title in latest_payments],
        },
    }


# --- analytics --------------------------------------------------------------------------------

def revenue_by_month(months: int = 12) -> dict:
    keys = last_months(months)
    found: dict[tuple[str, str], tuple[int, Decimal]] = {}
    for bucket, totals in tallied(("revenue",))["revenue"].items():
        month, currency = _split(bucket)
        if month and month >= keys[0]:  # later months too: their currencies are listed
            found[(month, currency)] = totals
    currencies = sorted({currency for (_, currency), (count, _) in found.items() if count})
    return {"months": keys, "currencies": currencies, "series": [
        {"month": month, "revenue": [
            {"currency": currency, "amount": money(found.get((month, currency), (0, 0))[1]),
             "payments": found.get((month, currency), (0, 0))[0]} for currency in currencies]}
        for month in keys]}


def enrollments_by_month(months: int = 12) -> dict:
    keys = last_months(months)
    found = tallied(("enrolled", "completed"))
    return {"months": keys, "series": [
        {"month": m, "enrollments": found["enrolled"].get(m, (0, 0))[0],
         "completions": found["completed"].get(m, (0, 0))[0]}
        for m in keys]}


def popular_courses(limit: int = 10) -> list[dict]:
    found = tallied(("course_enrollments", "course_revenue"))
    per_course: dict[int, list[int]] = {}
    for bucket, (count, _) in found["course_enrollments"].items():
        course_id, status = _split(bucket)
        entry = per_course.setdefault(int(course_id), [0, 0])
        entry[0] += count
        entry[1] += count if status == "completed" else 0
    top = sorted((course_id for course_id, (enrolled, _) in per_course.items() if enrolled > 0),
                 key=lambda course_id: (-per_course[course_id][0], course_id))[:limit]
    courses = {row.id: row for row in reader().execute(
        select(Course.id, Course.title, Course.status).where(Course.id.in_(top)))}
    # Revenue per course and currency (a course's price may have changed currency): never
    # added across currencies.
    revenue: dict[int, list] = {}
    for bucket, totals in found["course_revenue"].items():
        course_id, currency = _split(bucket)
        revenue.setdefault(int(course_id), []).append((currency, totals))
    return [{"course_id": course_id, "title": courses[course_id].title,
             "status": courses[course_id].status, "enrollments": enrolled,
             "completed": completed,
             "completion_rate": round(completed / enrolled * 100, 2),
             "revenue": [{"currency": entry["currency"], "amount": entry["amount"]}
                         for entry in _by_currency(revenue.get(course_id, []))]}
            for course_id in top if course_id in courses
            for enrolled, completed in [per_course[course_id]]]


# --- users ------------------------------------------------------------------------------------

def users_query(*, search: str | None = None, role: str | None = None,
                is_active: bool | None = None):
    query = select(User).order_by(User.created_at.desc(), User.id.desc())
    if search:
        pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_") + "%"
        query = query.where(or_(
            func.lower(User.email).like(pattern, escape="\\"),
            func.lower(User.first_name).like(pattern, escape="\\"),
            func.lower(User.last_name).like(pattern, escape="\\"),
            func.lower(User.first_name + " " + User.last_name).like(pattern, escape="\\"),
            User.phone_number.like(pattern, escape="\\")))
    if role:
        query = query.where(User.role == role)
    if is_active is not None:
        query = query.where(User.is_active.is_(is_active))
    return query


def get_user(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound("User not found")
    return user


def user_detail(user: User) -> dict:
    enrollments = dict(db.session.execute(
        select(Enrollment.status, func.count(Enrollment.id))
        .where(Enrollment.user_id == user.id).group_by(Enrollment.status)).all())
    payments = db.session.execute(
        select(Payment.status, Payment.currency, func.count(Payment.id), func.sum(Payment.amount))
        .where(Payment.user_id == user.id).group_by(Payment.status, Payment.currency)).all()
    taught = db.session.scalar(select(func.count(Course.id)).where(Course.instructor_id == user.id))
    data = user.to_dict(private=True)
    data["locked_until"] = iso(user.locked_until)
    data["enrollments"] = {"total": sum(enrollments.values()), "by_status": enrollments}
    data["payments"] = {
        "total": sum(count for _, _, count, _ in payments),
        "completed": [{"currency": currency, "amount": money(total), "count": count}
                      for status, currency, count, total in payments if status == "completed"],
        "by_status": _counts_by_status(payments)}
    data["courses_taught"] = taught
    return data


def _counts_by_status(rows) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status, _currency, count, _total in rows:
        counts[status] = counts.get(status, 0) + count
    return counts


def _other_active_admins(user: User) -> int:
    """Active admins other than `user`, counted with their rows locked (FOR UPDATE on
    PostgreSQL): two admins demoting each other at once cannot both pass the check."""
    ids = db.session.scalars(select(User.id).where(
        User.role == "admin", User.is_active.is_(True)).order_by(User.id).with_for_update())
    return sum(1 for admin_id in ids if admin_id != user.id)


def _guard_admin_change(actor: User, target: User, *, new_role: str | None,
                        new_active: bool | None) -> None:
    loses_admin = target.role == "admin" and (
        (new_role is not None and new_role != "admin") or new_active is False)
    if not loses_admin:
        return
    if target.id == actor.id:
        raise Conflict("You cannot demote or deactivate yourself", code="self_lockout")
    if target.is_active and _other_active_admins(target) == 0:
        raise Conflict("This is the last active admin", code="last_admin")


AUDITED_USER_FIELDS = ("role", "is_active", "first_name", "last_name", "phone_number", "bio",
                       "headline", "country", "city", "website", "is_email_verified",
                       "is_phone_verified")


def snapshot(user: User) -> dict:
    return {name: getattr(user, name) for name in AUDITED_USER_FIELDS}


def update_user(actor: User, target: User, changes: dict) -> tuple[dict, dict]:
    """Apply an admin's changes; returns (before, after) of what changed."""
    _guard_admin_change(actor, target, new_role=changes.get("role"),
                        new_active=changes.get("is_active"))
    if "phone_number" in changes and changes["phone_number"]:
        taken = db.session.scalar(select(User.id).where(
            User.phone_number == changes["phone_number"], User.id != target.id))
        if taken:
            raise Conflict("Another account has this phone number", code="phone_taken")
    before = snapshot(target)
    for name, value in changes.items():
        setattr(target, name, value)
    if changes.get("is_active") is False and before["is_active"]:
        auth_service.revoke_all_tokens(target)
    if "role" in changes and changes["role"] != before["role"]:
        auth_service.revoke_all_tokens(target)  # tokens carry the role claim
    after = snapshot(target)
    changed = {k for k in after if after[k] != before[k]}
    return ({k: before[k] for k in changed}, {k: after[k] for k in changed})


def deactivate(actor: User, target: User) -> tuple[dict, dict]:
    if not target.is_active:
        raise Conflict("This account is already deactivated")
    return update_user(actor, target, {"is_active": False})


def promote(actor: User, target: User) -> tuple[dict, dict]:
    if target.role != "student":
        raise Conflict(f"Only students can be promoted; this user is {target.role}",
                       code="not_a_student")
    if not target.is_active:
        raise Conflict("Deactivated accounts cannot be promoted")
    return update_user(actor, target, {"role": "instructor"})


# --- courses ----------------------------------------------------------------------------------

def courses_query(*, status: str | None = None, instructor_id: int | None = None,
                  search: str | None = None, pending: bool = False):
    query = catalog_service.course_query(statuses=(status,) if status else None,
                                         instructor_id=instructor_id, search=search)
    if pending:
        query = (catalog_service.course_query(statuses=("draft",))
                 .where(Course.review_requested_at.is_not(None))
                 .order_by(None).order_by(Course.review_requested_at.asc(), Course.id.asc()))
    return query


def set_course_status(course: Course, status: str) -> tuple[str, str]:
    before = course.status
    course_service.set_status(course, status)
    return before, course.status


# --- payments ---------------------------------------------------------------------------------

def payment_filters(*, status=None, user_id=None, course_id=None, gateway=None,
                    date_from: date | None = None, date_to: date | None = None) -> list:
    """WHERE conditions for the admin's payment list, totals and export (dates inclusive)."""
    conditions = []
    if status:
        conditions.append(Payment.status == status)
    if user_id:
        conditions.append(Payment.user_id == user_id)
    if course_id:
        conditions.append(Payment.course_id == course_id)
    if gateway:
        conditions.append(Payment.gateway == gateway)
    if date_from:
        conditions.append(Payment.created_at >= datetime.combine(date_from, datetime.min.time(),
                                                                 tzinfo=timezone.utc))
    if date_to:
        conditions.append(Payment.created_at < datetime.combine(
            date_to, datetime.min.time(), tzinfo=timezone.utc) + timedelta(days=1))
    return conditions


def payment_totals(conditions: list, filters: dict | None = None) -> list[dict]:
    """The count and sum of the payments `conditions` select, by currency and status. Given
    the `filters` they were made from, a filter without a user or a course (whose index keeps
    the sum small) is one of the admin figures: the whole table's sums (a million payments
    take ~0.3 s) are kept for ADMIN_STATS_CACHE_SECONDS, one recompute at a time."""
    if filters is None or filters.get("user_id") or filters.get("course_id"):
        return _payment_totals(conditions)
    return figures("payment-totals", lambda: _payment_totals(conditions),
                   *(f"{name}={filters[name]}" for name in sorted(filters)))


def _payment_totals(conditions: list) -> list[dict]:
    rows = reader().execute(
        select(Payment.currency, Payment.status, func.count(Payment.id), func.sum(Payment.amount))
        .where(*conditions).group_by(Payment.currency, Payment.status)
        .order_by(Payment.currency, Payment.status)).all()
    totals: dict[str, dict] = {}
    for currency, status, count, amount in rows:
        entry = totals.setdefault(currency, {"currency": currency, "count": 0,
                                             "amount": Decimal(0), "by_status": {}})
        entry["count"] += count
        entry["amount"] += amount or 0
        entry["by_status"][status] = {"count": count, "amount": money(amount or 0)}
    return [{**entry, "amount": money(entry["amount"])} for entry in totals.values()]


CSV_COLUMNS = ("id", "created_at", "paid_at", "status", "gateway", "amount", "currency",
               "refunded_amount", "user_id", "user_email", "course_id", "course_title",
               "gateway_order_id", "gateway_payment_id", "invoice_number")


def payments_csv(conditions: list, chunk: int = 1000):
    """The filtered payments as CSV, streamed in chunks (keyset pagination by id)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    last_id = 0
    while True:
        rows = db.session.execute(
            select(Payment, User.email, Course.title)
            .join(User, User.id == Payment.user_id).join(Course, Course.id == Payment.course_id)
            .where(*conditions, Payment.id > last_id).order_by(Payment.id).limit(chunk)).all()
        if not rows:
            return
        buffer.seek(0)
        buffer.truncate()
        for p, email, title in rows:
            writer.writerow([p.id, iso(p.created_at), iso(p.paid_at), p.status, p.gateway,
                             f"{money(p.amount):.2f}", p.currency,
                             f"{money(p.refunded_amount):.2f}", p.user_id, _csv_safe(email),
                             p.course_id, _csv_safe(title), p.gateway_order_id or "",
                             p.gateway_payment_id or "", p.invoice_number or ""])
        last_id = rows[-1][0].id
        yield buffer.getvalue()


def _csv_safe(value: str | None) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas: neutralise them."""
    value = value or ""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


# --- audit log --------------------------------------------------------------------------------

def audit_query(*, actor_id=None, action=None, target_type=None, target_id=None):
    query = select(AuditLog).order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
    if actor_id:
        query = query.where(AuditLog.actor_id == actor_id)
    if action:
        query = query.where(AuditLog.action.like(action.replace("%", "") + "%"))
    if target_type:
        query = query.where(AuditLog.target_type == target_type)
    if target_id:
        query = query.where(AuditLog.target_id == target_id)
    return query


