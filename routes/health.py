"""Liveness and readiness probes for load balancers and orchestrators."""
from __future__ import annotations

from flask import Blueprint, current_app
from pydantic import BaseModel
from spectree import Response
from sqlalchemy import text

from models import db
from utils.pipeline import redis_client
from utils.validation import validate

bp = Blueprint("health", __name__)


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    checks: dict[str, str]


@bp.get("")
@validate(resp=Response(HTTP_200=HealthOut), tags=["health"])
def health():
    """The process is up and answering."""
    return {"status": "ok"}


@bp.get("/ready")
@validate(resp=Response(HTTP_200=ReadyOut, HTTP_503=ReadyOut), tags=["health"])
def ready():
    """The database (and Redis, when configured) are reachable; 503 when one is not."""
    checks: dict[str, str] = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready"
        db.session.rollback()
        current_app.logger.warning("readiness: database unreachable: %s", type(exc).__name__)
        checks["database"] = "unavailable"
    if current_app.config.get("REDIS_URL"):
        checks["redis"] = "ok" if redis_client.ping() else "unavailable"
    else:
        checks["redis"] = "not_configured"
    healthy = all(value in ("ok", "not_configured") for value in checks.values())
    return {"status": "ok" if healthy else "unavailable", "checks": checks}, 200 if healthy else 503
