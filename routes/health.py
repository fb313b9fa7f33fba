"""Liveness and readiness probes for load balancers and orchestrators."""
from __future__ import annotations

from typing import Literal

from flask import Blueprint, current_app
from spectree import Response
from sqlalchemy import text
from typing_extensions import TypedDict

from models import db
from utils.pipeline import redis_client
from utils.validation import validate

bp = Blueprint("health", __name__)


class HealthResponse(TypedDict):
    """The process answers."""

    status: Literal["ok"]


class ReadyResponse(TypedDict):
    """Each dependency's state: `ok`, `unavailable` or `not_configured`."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, Literal["ok", "unavailable", "not_configured"]]


@bp.get("")
@validate(resp=Response(HTTP_200=HealthResponse), tags=["health"])
def health():
    """The process is up and answering."""
    return {"status": "ok"}


@bp.get("/ready")
@validate(resp=Response(HTTP_200=ReadyResponse, HTTP_503=ReadyResponse), tags=["health"])
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
