"""A list page costs the same however long the list: the total is exact up to
utils.pagination.EXACT_COUNT_LIMIT and estimated above it (PostgreSQL's planner), flagged
`total_is_estimate` (README, Performance; the OpenAPI document's PaginationOut). The limit is
lowered here so that a long list is a dozen rows."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert, select

from models import AuditLog, db
from tests.conftest import redis_url, require_service
from tests.support.assertions import ok
from tests.support.queries import recorded_statements
from tests.test_admin import UTC, add, by_currency, ledger, payment  # noqa: F401 (a fixture)
from utils import pagination
from utils.helpers import utcnow

LOG = "/api/v1/admin/audit-log"


@pytest.fixture
def admin(make_user, auth_headers):
    admin_id = make_user("admin")
    return admin_id, auth_headers(admin_id)


def add_entries(app, actor_id: int, count: int) -> None:
    now = utcnow()
    with app.app_context():
        db.session.execute(insert(AuditLog), [
            {"actor_id": actor_id, "action": "user.update", "target_type": "user",
             "target_id": n, "created_at": now - timedelta(seconds=n)} for n in range(count)])
        db.session.commit()


def page(client, headers, query: str) -> tuple[dict, int]:
    with recorded_statements(client.application) as seen:
        body = ok(client.get(f"{LOG}{query}", headers=headers))
    return body, len([s for s in seen if "audit_logs" in s])


def test_short_list_counts_exactly_in_the_page_statement(app, client, admin, monkeypatch):
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 5)
    admin_id, headers = admin
    add_entries(app, admin_id, 5)
    body, statements = page(client, headers, "?per_page=2&page=2")
    assert body["pagination"] == {"page": 2, "per_page": 2, "total": 5, "pages": 3,
                                  "has_next": True, "has_prev": True}
    assert [e["target_id"] for e in body["entries"]] == [2, 3]
    assert statements == 1  # rows and total in one statement
    # Past the end: no rows to carry the total, one more (capped) count.
    body, statements = page(client, headers, "?per_page=2&page=4")
    assert body["entries"] == [] and body["pagination"]["total"] == 5
    assert "total_is_estimate" not in body["pagination"] and statements == 2


def test_long_list_total_is_estimated_on_postgres_and_flagged(app, client, admin,
                                                              monkeypatch):
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 5)
    admin_id, headers = admin
    add_entries(app, admin_id, 12)
    body, statements = page(client, headers, "?per_page=4&page=2")
    assert [e["target_id"] for e in body["entries"]] == [4, 5, 6, 7]
    meta = body["pagination"]
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        # The planner's figure (whatever ANALYZE last saw), never below the rows seen so far
        # plus one (a full page offers a next one), nor the limit.
        assert meta["total_is_estimate"] is True
        assert meta["total"] >= 9 and meta["has_next"] is True and meta["has_prev"] is True
        assert meta["pages"] == -(-meta["total"] // 4)
        assert statements == 2  # the page (capped count inside) and the EXPLAIN
    else:  # SQLite: exact, as its lists are small
        assert meta == {"page": 2, "per_page": 4, "total": 12, "pages": 3, "has_next": True,
                        "has_prev": True}
    # The filter still applies to the rows; a short filtered list is exact again.
    body, _ = page(client, headers, "?target_id=3")
    assert body["pagination"]["total"] == 1 and "total_is_estimate" not in body["pagination"]


def test_broad_payment_totals_are_kept_like_the_admin_figures(app, client, auth_headers,
                                                              ledger):  # noqa: F811
    """The totals of a filter without a user or a course sum much of a large table: kept for
    ADMIN_STATS_CACHE_SECONDS (as the dashboard is); the rows and a user's totals stay fresh."""
    require_service("Redis (TEST_REDIS_URL)", redis_url())
    headers = auth_headers(ledger.admin)
    app.config["ADMIN_STATS_CACHE_SECONDS"] = 30
    try:
        first = ok(client.get("/api/v1/admin/payments", headers=headers))
        assert by_currency(first["totals"])["USD"]["count"] == 3
        mine = f"/api/v1/admin/payments?user_id={ledger.u1}"
        assert by_currency(ok(client.get(mine, headers=headers))["totals"])["USD"]["count"] == 1
        add(app, payment(ledger.u1, ledger.c1, "7.00", created_at=datetime(2025, 3, 1, tzinfo=UTC),
                         paid_at=datetime(2025, 3, 1, tzinfo=UTC)))
        again = ok(client.get("/api/v1/admin/payments", headers=headers))
        assert again["pagination"]["total"] == 6  # the page is read at once
        assert by_currency(again["totals"])["USD"]["count"] == 3  # the kept totals
        assert by_currency(ok(client.get(mine, headers=headers))["totals"])["USD"] == {
            "currency": "USD", "count": 2, "amount": 17.0,
            "by_status": {"completed": {"count": 2, "amount": 17.0}}}
        # Each filter has its own copy.
        refunded = ok(client.get("/api/v1/admin/payments?status=refunded", headers=headers))
        assert by_currency(refunded["totals"])["USD"]["count"] == 1
    finally:
        app.config["ADMIN_STATS_CACHE_SECONDS"] = 0


def test_estimate_of_a_query_with_in_lists_and_like_patterns(app, admin, monkeypatch):
    """EXPLAIN gets the statement as the page ran it: `IN (...)` expanded, `%` in a pattern and
    in the SQL kept apart."""
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 5)
    add_entries(app, admin[0], 12)
    query = (select(AuditLog).where(AuditLog.target_id.in_(list(range(11))),
                                    AuditLog.action.like("user.%"), AuditLog.id % 1 == 0)
             .order_by(AuditLog.created_at.desc(), AuditLog.id.desc()))
    with app.app_context():
        rows, meta = pagination.paginate(query, 3, 4)
        assert [row.target_id for row in rows] == [8, 9, 10]
        if db.engine.dialect.name == "postgresql":
            assert meta["total_is_estimate"] is True and meta["total"] >= 11
        else:
            assert meta["total"] == 11 and "total_is_estimate" not in meta


def test_the_count_reads_rows_not_columns_and_keeps_distinct(app, admin):
    """The capped count selects a constant from the list's FROM clauses (PostgreSQL then
    drops joins kept for columns), except where DISTINCT needs the columns to count."""
    admin_id, _ = admin
    add_entries(app, admin_id, 4)
    with app.app_context():
        listing = select(AuditLog.id, AuditLog.action).where(AuditLog.target_id < 3)
        counted = pagination._capped_count(listing)
        sql = " ".join(str(counted.compile(db.engine)).split())
        assert "FROM (SELECT 1 FROM audit_logs WHERE audit_logs.target_id <" in sql
        assert "audit_logs.action" not in sql
        assert db.session.scalar(counted) == 3
        # Four rows of one action: DISTINCT counts one.
        distinct = select(AuditLog.action).distinct()
        assert "audit_logs.action" in str(pagination._capped_count(distinct).compile(db.engine))
        assert db.session.scalar(pagination._capped_count(distinct)) == 1
        assert db.session.scalar(pagination._capped_count(
            select(AuditLog.action, AuditLog.target_id).group_by(
                AuditLog.action, AuditLog.target_id))) == 4
