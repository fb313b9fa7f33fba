"""Routes that exist only in the test app, to drive each error path through the real
middleware, validation layer and decorators."""
from __future__ import annotations

from flask import Blueprint, request
from pydantic import Field

from auth import current_user, login_required, roles_required
from models import MasterCategory, db
from utils.errors import Conflict
from utils.extensions import limiter
from utils.pagination import paginate
from utils.validation import PageQuery, StrictModel, json_body, query_args, validate

bp = Blueprint("probe", __name__)


class EchoIn(StrictModel):
    name: str = Field(min_length=1, max_length=20)
    count: int = Field(ge=0, le=10)


@bp.post("/echo")
@validate(json=EchoIn)
def echo():
    body = json_body()
    return {"name": body.name, "count": body.count}


@bp.get("/page")
@validate(query=PageQuery)
def page():
    args = query_args()
    items, meta = paginate(
        db.select(MasterCategory).order_by(MasterCategory.id), args.page, args.per_page
    )
    return {"items": [c.id for c in items], "pagination": meta}


@bp.post("/conflict")
def conflict():
    raise Conflict("Already there", details={"email": "taken"})


@bp.post("/duplicate-category")
def duplicate_category():
    db.session.add(MasterCategory(name="Same", slug="same-1"))
    db.session.add(MasterCategory(name="Same", slug="same-2"))
    db.session.commit()
    return {"unreachable": True}


@bp.post("/boom")
def boom():
    db.session.add(MasterCategory(name="half-written", slug="half-written"))
    db.session.flush()
    raise RuntimeError("secret internal detail")


@bp.post("/upload")
def upload():
    return {"size": len(request.get_data())}


@bp.get("/limited")
@limiter.limit("2 per minute")
def limited():
    return {"ok": True}


@bp.get("/me")
@login_required
def me():
    return {"id": current_user().id}


@bp.get("/admin-only")
@roles_required("admin")
def admin_only():
    return {"ok": True}


@bp.post("/lost-connection")
def lost_connection():
    """Writes, commits, reads again, then loses its database connection (PostgreSQL ends the
    backend, as a restart does) before the request's teardown closes the session."""
    db.session.add(MasterCategory(name="Kept", slug="kept-before-the-loss"))
    db.session.commit()
    pid = db.session.execute(db.text("SELECT pg_backend_pid()")).scalar()
    with db.engine.connect() as other:
        other.execute(db.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return {"backend": pid}
