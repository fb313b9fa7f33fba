"""A list page costs the same however long the list: the total is exact up to
utils.pagination.EXACT_COUNT_LIMIT and estimated above it (PostgreSQL's planner), flagged
`total_is_estimate` (README, Performance; the OpenAPI document's PaginationOut). The limit is
lowered here so that a long list is a dozen rows."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert

from models import AuditLog, db
from tests.support.assertions import ok
from tests.support.queries import recorded_statements
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
