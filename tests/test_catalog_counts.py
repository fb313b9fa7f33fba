"""A catalog page's statement (utils/pagination.PageStatement): its LIMIT written in the SQL (the
smallest of PageStatement.LIMITS that holds the page, the extra rows dropped), no OFFSET on a
first page, and its count made once per catalog version: a page asked again under the version
its count was read under runs without the count, and any catalog write, a lost version or the
count's age makes the next page count again. Each page must still say what a count would."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert

from models import Course, User, db
from tests.support.assertions import ok
from tests.support.fast_apps import redis_app
from tests.support.queries import recorded_statements
from utils import pagination
from utils.helpers import utcnow
from utils.pipeline import catalog_cache, redis_client, shared_state

API = "/api/v1"
LIST = f"{API}/public/get-courses"


def _published(app, count: int, start: int = 0, **fields) -> list[int]:
    """`count` published courses, each newer than the last; their ids, newest first."""
    with app.app_context():
        teacher = db.session.scalar(db.select(User).filter_by(email="count-teacher@example.com"))
        if teacher is None:
            teacher = User(email="count-teacher@example.com", role="instructor",
                           first_name="Count", last_name="Teacher")
            teacher.set_password("Passw0rd!")
            db.session.add(teacher)
            db.session.flush()
        now = utcnow()
        courses = [Course(title=f"Counted {n}", slug=f"counted-{n}", instructor_id=teacher.id,
                          status="published", price=0, created_at=now + timedelta(seconds=n),
                          **fields) for n in range(start, start + count)]
        db.session.add_all(courses)
        db.session.commit()
        return [c.id for c in reversed(courses)]


def _page_statements(statements: list[str]) -> list[str]:
    return [s for s in statements if "FROM courses" in s and "ORDER BY" in s]


def _counted(statements: list[str]) -> bool:
    """Whether the page's statement counted the list (its count subquery)."""
    [page] = _page_statements(statements)
    return "count(*)" in page


@pytest.fixture
def uncached_app(app):
    with redis_app(app, CATALOG_CACHE_SECONDS=0) as fast:
        yield fast


def test_the_limit_is_written_and_a_first_page_has_no_offset(app, client):
    ids = _published(app, 25)
    # SQLite's compiler writes `OFFSET 0` where a select has none.
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    seen = []
    for query, limit, offset, size in (("per_page=15", 20, False, 15),
                                       ("per_page=15&page=2", 20, True, 10),
                                       ("per_page=10&page=3", 10, True, 5),
                                       ("per_page=100", 100, False, 25),
                                       ("per_page=7", 10, False, 7)):
        with recorded_statements(app) as statements:
            body = ok(client.get(f"{LIST}?{query}"))
        [page] = _page_statements(statements)
        assert f"LIMIT {limit}" in " ".join(page.split()), (query, page)
        if postgres:
            assert ("OFFSET" in page) is offset, (query, page)
        assert len(body["courses"]) == size, query
        assert body["pagination"]["total"] == 25, query
        seen.append([c["id"] for c in body["courses"]])
    # The rows are the list's, in its order: two pages of 15 cover it, the others are slices.
    assert seen[0] + seen[1] == ids
    assert seen[2] == ids[20:25] and seen[3] == ids and seen[4] == ids[:7]
    meta = ok(client.get(f"{LIST}?per_page=15"))["pagination"]
    assert (meta["pages"], meta["has_next"], meta["has_prev"]) == (2, True, False)


def test_a_list_is_counted_once_per_catalog_version(uncached_app):
    """Cache off: every page is computed (by the catalog fast path for a guest, by Flask for
    a signed-in reader), but the count only while the version is not the one it was read
    under; a write through the ORM, a bulk insert included, moves the version."""
    app = uncached_app
    client = app.test_client()
    first = _published(app, 3)
    ok(client.get(f"{LIST}?sort=title"))  # the first request syncs the shared state: a version
    counts = []
    for _ in range(3):
        with recorded_statements(app) as statements:
            body = ok(client.get(f"{LIST}?per_page=2"))
        counts.append(_counted(statements))
        assert body["pagination"]["total"] == 3 and body["pagination"]["pages"] == 2
        assert [c["id"] for c in body["courses"]] == first[:2]
    assert counts == [True, False, False]
    # Another list (other values of the same filters) has a count of its own.
    with recorded_statements(app) as statements:
        assert ok(client.get(f"{LIST}?per_page=2&difficulty=advanced"))["pagination"][
            "total"] == 0
    assert _counted(statements)
    # A page past the end under the kept count: no rows, the total still known, no count.
    with recorded_statements(app) as statements:
        body = ok(client.get(f"{LIST}?per_page=2&page=9"))
    assert body["courses"] == [] and body["pagination"]["total"] == 3
    assert not any("count(" in s for s in statements), statements
    # A course published through the ORM: the next page counts it.
    _published(app, 1, start=3)
    with recorded_statements(app) as statements:
        body = ok(client.get(f"{LIST}?per_page=2"))
    assert _counted(statements) and body["pagination"]["total"] == 4
    # A bulk insert (no objects in the session) moves the version too.
    with app.app_context():
        teacher_id = db.session.scalar(db.select(User.id).filter_by(
            email="count-teacher@example.com"))
        db.session.execute(insert(Course), [
            {"title": f"Bulk {n}", "slug": f"bulk-{n}", "instructor_id": teacher_id,
             "status": "published", "price": 0, "currency": "USD", "difficulty": "beginner",
             "language": "en", "mode_of_conduct": "ONLINE", "learning_outcomes": []}
            for n in range(2)])
        db.session.commit()
    with recorded_statements(app) as statements:
        body = ok(client.get(f"{LIST}?per_page=2"))
    assert _counted(statements) and body["pagination"]["total"] == 6


def test_a_signed_in_reader_s_list_is_counted_once_per_version(uncached_app, make_user,
                                                              auth_headers):
    app = uncached_app
    client = app.test_client()
    headers = auth_headers(make_user())
    _published(app, 2)
    ok(client.get(f"{LIST}?sort=title", headers=headers))  # the sync: a version from now on
    counted = []
    for path in (f"{API}/courses", f"{API}/courses", LIST, f"{API}/public/courses/search?q=counted",
                 f"{API}/public/courses/search?q=counted"):
        with recorded_statements(app) as statements:
            assert ok(client.get(path, headers=headers))["pagination"]["total"] == 2, path
        counted.append(_counted(statements))
    # /courses and get-courses are the same list (same filters, same statement).
    assert counted == [True, False, False, True, False]


def test_a_lost_version_is_not_trusted_and_comes_back_past_every_earlier_value(uncached_app):
    app = uncached_app
    client = app.test_client()
    _published(app, 2)
    ok(client.get(LIST))
    with app.app_context():
        store = redis_client.get()
        before = int(store.get(catalog_cache.VERSION_KEY))
        store.delete(catalog_cache.VERSION_KEY)  # evicted, or Redis lost it
    for _ in range(2):  # nothing kept is trusted while the version is missing
        with recorded_statements(app) as statements:
            assert ok(client.get(LIST))["pagination"]["total"] == 2
        assert _counted(statements)
    with app.app_context():
        assert shared_state.sync(store)
        again = int(store.get(catalog_cache.VERSION_KEY))
        store.delete(catalog_cache.VERSION_KEY)
        catalog_cache.bump()  # a write that finds it missing starts it from the clock too
        bumped = int(store.get(catalog_cache.VERSION_KEY))
    assert again > before and bumped > again
    with recorded_statements(app) as statements:
        assert ok(client.get(LIST))["pagination"]["total"] == 2
    assert _counted(statements)


def test_a_kept_count_is_recounted_once_it_is_old(uncached_app, monkeypatch):
    """A write whose version bump was lost (Redis down at that moment) is counted once the kept
    count is TOTAL_SECONDS old."""
    app = uncached_app
    client = app.test_client()
    _published(app, 2)
    ok(client.get(LIST))
    with app.app_context():
        version = redis_client.get().get(catalog_cache.VERSION_KEY)
    _published(app, 1, start=2)
    with app.app_context():
        redis_client.get().set(catalog_cache.VERSION_KEY, version)  # as if the bump was lost
    assert ok(client.get(LIST))["pagination"]["total"] == 2  # the kept count, within its time
    monkeypatch.setattr(pagination, "TOTAL_SECONDS", 0)
    with recorded_statements(app) as statements:
        assert ok(client.get(LIST))["pagination"]["total"] == 3
    assert _counted(statements)


def test_a_page_past_the_written_limits_binds_its_limit_and_a_list_value_is_counted(app):
    """An internal caller's page of more than 100 rows keeps a bound LIMIT; values that cannot
    be hashed (a list) are never kept, only counted."""
    from sqlalchemy import bindparam, select

    from models import MasterCategory
    with app.app_context():
        db.session.add_all([MasterCategory(name=f"C{n}", slug=f"c-{n}") for n in range(130)])
        db.session.commit()
        table = MasterCategory.__table__
        statement = pagination.PageStatement(
            select(table.c.id).where(table.c.slug.in_(bindparam("slugs", expanding=True)))
            .order_by(table.c.id))
        slugs = [f"c-{n}" for n in range(130)]
        with recorded_statements(app) as statements:
            rows, meta = statement.page({"slugs": slugs}, 1, 150, version=7)
            later, later_meta = statement.page({"slugs": slugs}, 2, 120, version=7)
        assert len(rows) == 130 and (meta["total"], meta["pages"]) == (130, 1)
        assert len(later) == 10 and later_meta["total"] == 130 and later_meta["has_prev"]
        assert [row[0] for row in rows][120:] == [row[0] for row in later]
        assert all("LIMIT 1" not in s and "LIMIT" in s for s in statements), statements
        assert all("count(*)" in s for s in statements)  # a list value: nothing kept
        assert statement.totals == {}


def test_hostile_searches_cannot_grow_the_kept_counts_past_their_bound(uncached_app,
                                                                        monkeypatch):
    """Each search text is a list of its own: a client sending a new one each time (long,
    hostile or not) adds one kept count each, and past TOTAL_KEYS they are all forgotten at
    once; every answer is still counted right."""
    from services import catalog_service, course_service

    app = uncached_app
    client = app.test_client()
    _published(app, 2)
    ok(client.get(f"{LIST}?sort=title"))  # the sync: a version from now on
    monkeypatch.setattr(pagination, "TOTAL_KEYS", 3)
    texts = ["counted", "absent", "absent " + "x" * 150, "absent two", "absent three",
             "absent ' OR 1=1 --"]
    for text in texts:
        body = ok(client.get(f"{API}/public/courses/search", query_string={"q": text}))
        assert body["pagination"]["total"] == (2 if text == "counted" else 0), text
    with app.app_context():
        shape = catalog_service.catalog_shape(search="counted", sort="newest")
        postgres = db.engine.dialect.name == "postgresql"
        kept = course_service._list_statement(shape.build, shape.shape, postgres).totals
    assert 1 <= len(kept) <= 3
