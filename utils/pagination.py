"""One page of a list, in the contract's shape (`utils.helpers.pagination_meta`).

A page costs the same however long its list grows: its rows come from the list's ordered index
(LIMIT/OFFSET), and the total is counted exactly only up to EXACT_COUNT_LIMIT rows, in the same
statement. A longer list's total is PostgreSQL's planner estimate for the list's query (the
table statistics ANALYZE keeps, as `pg_class.reltuples` for a whole table), never below the
limit, and the answer says so with `total_is_estimate: true` (`pages` and `has_next` follow
from it). Counting a million rows exactly for a page of twenty took longer than the page.
"""
from __future__ import annotations

import json

from sqlalchemy import func, literal_column
from sqlalchemy import select as select_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.sql.visitors import InternalTraversal

from models import db
from utils.helpers import pagination_meta

# Totals up to this many rows are exact; above it, estimated (see the module's docstring).
EXACT_COUNT_LIMIT = 1000


def _capped_count(select):
    """count(*) of `select`'s rows, stopping at EXACT_COUNT_LIMIT + 1."""
    capped = select.order_by(None).limit(EXACT_COUNT_LIMIT + 1).subquery()
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


def _estimate(select) -> int | None:
    """The planner's row estimate for `select` (PostgreSQL), else None."""
    if db.session.get_bind().dialect.name != "postgresql":
        return None
    plan = db.session.scalar(_Explain(select))
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


def _page(select, page: int, per_page: int, extra, entities: bool):
    """One page of `select` and its pagination dict; each row also carries `_total`, last."""
    counted = select.add_columns(*extra,
                                 _capped_count(select).scalar_subquery().label("_total"))
    result = db.session.execute(counted.limit(per_page).offset((page - 1) * per_page))
    rows = (result.unique() if entities else result).all()
    if rows:
        total = rows[0][-1]
    elif page == 1:
        total = 0
    else:
        total = db.session.scalar(_capped_count(select))
    meta = pagination_meta(page, per_page, total or 0)
    if total and total > EXACT_COUNT_LIMIT:
        estimate = _estimate(select)
        if estimate is None:  # SQLite: small by nature; count exactly
            total = db.session.scalar(select_(func.count()).select_from(
                select.order_by(None).subquery()))
            meta = pagination_meta(page, per_page, total)
        else:
            # Never fewer than the rows already seen (the limit, this page's end), and a full
            # page always offers a next one.
            total = max(estimate, EXACT_COUNT_LIMIT + 1, (page - 1) * per_page + len(rows)
                        + (len(rows) == per_page))
            meta = pagination_meta(page, per_page, total)
            meta["total_is_estimate"] = True
    return rows, meta


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


def paginate_rows(select, page: int, per_page: int):
    """`paginate` for a select of columns, no entity: each item is its row as the database
    sent it (read by position; a last column, `_total`, follows the select's own)."""
    return _page(select, page, per_page, (), entities=False)


def page_of(key: str, query, args) -> dict:
    """A list answer in the contract's shape: {key: [each row's to_dict()], "pagination":
    {...}}, one page of `query` (`args` carries page and per_page)."""
    rows, meta = paginate(query, args.page, args.per_page)
    return {key: [row.to_dict() for row in rows], "pagination": meta}
