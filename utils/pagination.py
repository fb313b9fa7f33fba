"""One page of a list, in the contract's shape (`utils.helpers.pagination_meta`)."""
from __future__ import annotations

from sqlalchemy import func
from sqlalchemy import select as select_

from models import db
from utils.helpers import pagination_meta


def paginate(select, page: int, per_page: int):
    """Run a select of one entity (with a deterministic order_by) one page at a time, in one
    round trip: the total comes with the rows (`count(*) OVER ()`). Only a page past the end,
    which has no rows to carry it, costs a second query. Returns (items, pagination dict in
    the contract's shape)."""
    counted = select.add_columns(func.count().over().label("_total"))
    rows = db.session.execute(counted.limit(per_page).offset((page - 1) * per_page)).unique()
    rows = rows.all()
    if rows:
        total = rows[0][-1]
    elif page == 1:
        total = 0
    else:
        total = db.session.scalar(select_(func.count()).select_from(
            select.order_by(None).subquery()))
    return [row[0] for row in rows], pagination_meta(page, per_page, total or 0)


def page_of(key: str, query, args) -> dict:
    """A list answer in the contract's shape: {key: [each row's to_dict()], "pagination":
    {...}}, one page of `query` (`args` carries page and per_page)."""
    rows, meta = paginate(query, args.page, args.per_page)
    return {key: [row.to_dict() for row in rows], "pagination": meta}
