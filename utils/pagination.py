"""One page of a list, in the contract's shape (`utils.helpers.pagination_meta`).

A page costs the same however long its list grows: its rows come from the list's ordered index
(LIMIT/OFFSET), and the total is counted exactly only up to EXACT_COUNT_LIMIT rows, in the same
statement. A longer list's total is PostgreSQL's planner estimate for the list's query (the
table statistics ANALYZE keeps, as `pg_class.reltuples` for a whole table), never below the
limit, and the answer says so with `total_is_estimate: true` (`pages` and `has_next` follow
from it). Counting a million rows exactly for a page of twenty took longer than the page.
The estimate moves only when ANALYZE runs, so each process keeps a list's (its query's shape
and parameters) for ESTIMATE_SECONDS: a long list's page is then one statement, not two.
"""
from __future__ import annotations

import json
import time

from sqlalchemy import Integer, bindparam, func, literal_column, null
from sqlalchemy import select as select_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.sql.visitors import InternalTraversal

from models import db
from utils.helpers import pagination_meta

# Totals up to this many rows are exact; above it, estimated (see the module's docstring).
EXACT_COUNT_LIMIT = 1000
# How long a process keeps a list's estimate, and for how many lists at most (search text
# makes them many: past the bound, all are forgotten at once).
ESTIMATE_SECONDS = 60
ESTIMATE_KEYS = 1000
_estimates: dict[tuple, tuple[float, int]] = {}
# How long a process keeps a list's count under a version that stands (PageStatement.page's
# `version`), and for how many lists of one statement at most.
TOTAL_SECONDS = 60
TOTAL_KEYS = 256


def _capped_count(select, cap=None):
    """count(*) of `select`'s rows, stopping at EXACT_COUNT_LIMIT + 1 (or at `cap`, a bind
    parameter of a statement built once). Only the rows are counted, not their columns: the
    counted subquery selects a constant (its FROM clauses kept), so PostgreSQL drops the joins
    the page needs only for columns and reads no wide row; this halved the count's share of a
    20-course page. A DISTINCT select keeps its columns, which decide what is distinct."""
    if not select._distinct and not select._distinct_on:
        select = select.with_only_columns(literal_column("1"), maintain_column_froms=True)
    capped = select.order_by(None).limit(
        EXACT_COUNT_LIMIT + 1 if cap is None else cap).subquery()
    return select_(func.count()).select_from(capped)


class _Explain(Executable, ClauseElement):
    """`EXPLAIN (FORMAT JSON) SELECT * FROM (select)`: a statement SQLAlchemy compiles once
    per shape of `select` and caches like any other (compiling the list's ORM select by hand
    for each estimate cost more CPU than the whole page). Expanding parameters (`IN (...)`)
    and `%` in patterns go through the ordinary execution path."""

    inherit_cache = True
    _traverse_internals = [("select", InternalTraversal.dp_clauseelement)]
    # Its one result column is the plan; the wrapped select's columns are not the result's.
    _all_selected_columns = ()

    def __init__(self, select):
        self.select = select_(literal_column("*")).select_from(select.order_by(None).subquery())


@compiles(_Explain)
def _compile_explain(element, compiler, **kw):
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.select, **kw)


def _estimate_key(bind, select, params: dict) -> tuple | None:
    """What identifies `select`'s estimate: the database, the statement's shape (SQLAlchemy's
    own cache key) and its parameters' values (those `params` gives, for a statement built
    once); None for a statement without a cache key."""
    cache_key = select._generate_cache_key()
    if cache_key is None:
        return None
    values = tuple(tuple(value) if isinstance(value, list) else value
                   for value in (params.get(param.key, param.effective_value)
                                 for param in cache_key.bindparams))
    return bind.url, cache_key.key, values


def _estimate(select, params: dict, connection=None) -> int | None:
    """The planner's row estimate for `select` (PostgreSQL), else None; asked on `connection`
    where the caller has one, else on the session's. (A fast path's session is a
    fast_reads.ReadSession: asked for its bind, it makes a real ORM session, which cost a
    public list of 1,001 courses ~30 us of its ~800 in process.)"""
    bind = db.session.get_bind() if connection is None else connection.engine
    if bind.dialect.name != "postgresql":
        return None
    key = _estimate_key(bind, select, params)
    now = time.monotonic()
    kept = _estimates.get(key) if key is not None else None
    if kept is not None and kept[0] > now:
        return kept[1]
    plan = (db.session if connection is None else connection).scalar(_Explain(select), params)
    plan = json.loads(plan) if isinstance(plan, str) else plan
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    if key is not None:
        if len(_estimates) >= ESTIMATE_KEYS:
            _estimates.clear()
        _estimates[key] = (now + ESTIMATE_SECONDS, estimate)
    return estimate


def _page(select, page: int, per_page: int, extra, entities: bool):
    """One page of `select` and its pagination dict; each row also carries `_total`, last."""
    counted = select.add_columns(*extra,
                                 _capped_count(select).scalar_subquery().label("_total"))
    result = db.session.execute(counted.limit(per_page).offset((page - 1) * per_page))
    rows = (result.unique() if entities else result).all()
    total = _capped_total(rows, page, lambda: db.session.scalar(_capped_count(select)))
    return rows, _meta(rows, page, per_page, select, {}, total)


def _capped_total(rows, page: int, count) -> int:
    """The list's capped count, carried last by each of the page's `rows`; `count()` counts
    when a page past the end has no row to carry it."""
    if rows:
        return rows[0][-1]
    return 0 if page == 1 else count()


def _meta(rows, page: int, per_page: int, select, params: dict, total: int,
          connection=None) -> dict:
    """The pagination dict of a page's `rows` whose list's capped count is `total`; a list
    past EXACT_COUNT_LIMIT gets the planner's estimate for `select` (run with `params`, on
    `connection` if given: see `_estimate`)."""
    meta = pagination_meta(page, per_page, total or 0)
    if total and total > EXACT_COUNT_LIMIT:
        estimate = _estimate(select, params, connection)
        if estimate is None:  # SQLite: small by nature; count exactly
            total = (db.session if connection is None else connection).scalar(
                select_(func.count()).select_from(select.order_by(None).subquery()), params)
            meta = pagination_meta(page, per_page, total)
        else:
            # Never fewer than the rows already seen (the limit, this page's end), and a full
            # page always offers a next one.
            total = max(estimate, EXACT_COUNT_LIMIT + 1, (page - 1) * per_page + len(rows)
                        + (len(rows) == per_page))
            meta = pagination_meta(page, per_page, total)
            meta["total_is_estimate"] = True
    return meta


def _page_read_as(statement, read_as):
    """A page's statement whose columns are read as `read_as(columns)` says, computed by the
    database for the page's rows only: the page (its sort and LIMIT) as a subquery, read in
    its order by a projection of its columns, each kept in its place (`read_as` returns one
    for each). Written inside the page, an expression is computed for every row the sort
    reads (a search matching 1,000 courses: 4,000 timestamps written as text). With
    models.as_text, a list's timestamps come as the API's text: a catalog page of 20 courses
    read 60 of them, each parsed, converted and formatted again here."""
    page = statement.subquery("page")
    return select_(*read_as(page.c))


class PageStatement:
    """A list whose page statement is built once, at import, from a select of columns whose
    varying values are named bind parameters (`bindparam("user_id")`); `page` then runs that
    one statement object, whose construction and cache key SQLAlchemy does not make again.
    Building a notification page's statement per request cost 0.34 ms of CPU, against 0.09 ms
    for running it (bench/hotpath.py's notifications list). The page's offset and the count's
    cap (EXACT_COUNT_LIMIT + 1, read at each call) are parameters too; `extra` as for
    `paginate_rows`, and so are the rows. Core rows through the session's connection: the
    select must name table columns, not ORM entities.

    `read_as`: a function of the page's columns that returns how to read each (see
    `_page_read_as`).

    The LIMIT is written in the statement, not bound: the smallest of LIMITS that holds the
    page (the rows past `per_page` are dropped here), and a first page has no OFFSET at all.
    PostgreSQL plans a prepared statement once (utils/read_only.py) without its parameters'
    values; with a bound LIMIT it assumes a tenth of the rows are wanted, and for a public
    list of 334 matching courses it joined and sorted all of them (0.86 ms a page). With the
    LIMIT known it plans the walk of the ordered index (0.47 ms).

    A list whose tables carry a version number that every write to them moves (the catalog's,
    in Redis: utils/pipeline/catalog_cache.py) is counted once per version: the capped count
    is kept in the process with the version read before counting, and a page of the same list
    and values asked under that same version runs the statement without the count (a public
    list's count was 0.18 ms of its 0.35 ms). Kept TOTAL_SECONDS at most, so a write
    whose bump was lost (Redis down) is counted within a minute, as an estimate is."""

    LIMIT, OFFSET, CAP = "page_limit", "page_offset", "page_count_cap"
    LIMITS = (10, 20, 50, 100)

    def __init__(self, select, extra=(), *, read_as=None):
        self.select = select
        cap = bindparam(self.CAP)
        self.count = _capped_count(select, cap)
        counted = select.add_columns(*extra, self.count.scalar_subquery().label("_total"))
        uncounted = select.add_columns(*extra, null().label("_total"))
        self.statements = {}  # (LIMIT or None for a bound one, first page, counted)
        self.totals: dict[tuple, tuple[int, float, int]] = {}  # key: (version, read at, count)
        for counts, base in ((True, counted), (False, uncounted)):
            self.statements[None, False, counts] = base.limit(bindparam(self.LIMIT)).offset(
                bindparam(self.OFFSET))
            for limit in self.LIMITS:
                written = base.limit(literal_column(str(limit), Integer))
                self.statements[limit, True, counts] = written
                self.statements[limit, False, counts] = written.offset(bindparam(self.OFFSET))
        if read_as is not None:
            self.statements = {key: _page_read_as(statement, read_as)
                               for key, statement in self.statements.items()}

    def page(self, params: dict, page: int, per_page: int, version: int | None = None):
        """(rows, pagination dict) of page `page` for the bind parameters' values `params`;
        each row carries the list's capped count last, or None where it was not counted: the
        count kept for these values under `version` (see the class's docstring)."""
        connection = db.session.connection()
        key = total = None
        if version is not None:
            key = (connection.engine, *sorted(params.items()))
            try:
                kept = self.totals.get(key)
            except TypeError:  # a value that cannot be hashed (a list): counted each time
                key = kept = None
            if kept is not None and kept[0] == version and \
                    time.monotonic() - kept[1] < TOTAL_SECONDS:
                total = kept[2]
        counting = {**params, self.CAP: EXACT_COUNT_LIMIT + 1}
        limit = next((n for n in self.LIMITS if n >= per_page), None)
        values = dict(counting if total is None else params)
        if limit is None:
            values[self.LIMIT] = per_page
        if page > 1 or limit is None:
            values[self.OFFSET] = (page - 1) * per_page
        statement = self.statements[limit, page == 1 and limit is not None, total is None]
        rows = connection.execute(statement, values).all()[:per_page]
        if total is None:
            total = _capped_total(rows, page, lambda: connection.scalar(self.count, counting))
            if key is not None:
                if len(self.totals) >= TOTAL_KEYS:
                    self.totals.clear()
                self.totals[key] = (version, time.monotonic(), total)
        return rows, _meta(rows, page, per_page, self.select, params, total, connection)


def paginate(select, page: int, per_page: int, extra=()):
    """Run a select of one entity (with a deterministic order_by) one page at a time, in one
    round trip: the capped total comes with the rows (an uncorrelated subquery, evaluated
    once). A page past the end, which has no rows to carry it, and a list longer than
    EXACT_COUNT_LIMIT (its estimate) cost a second query. Returns (items, pagination dict in
    the contract's shape). `extra` columns (per-row scalar subqueries: a row's counts) ride in
    the page's statement, not in its count; each item is then (entity, *extra values)."""
    rows, meta = _page(select, page, per_page, extra, entities=True)
    if extra:
        return [tuple(row[:-1]) for row in rows], meta
    return [row[0] for row in rows], meta


def paginate_rows(select, page: int, per_page: int, extra=()):
    """`paginate` for a select of columns, no entity: each item is its row as the database
    sent it (read by position: the select's columns, then `extra`'s, then `_total`). Rows are
    not made unique, so a column may hold what cannot be hashed (JSON)."""
    return _page(select, page, per_page, extra, entities=False)


def page_of(key: str, query, args) -> dict:
    """A list answer in the contract's shape: {key: [each row's to_dict()], "pagination":
    {...}}, one page of `query` (`args` carries page and per_page)."""
    rows, meta = paginate(query, args.page, args.per_page)
    return {key: [row.to_dict() for row in rows], "pagination": meta}
