"""Revoked JWTs.

Every revocation is written to the revoked_tokens table (durable, shared by all hosts) and,
when Redis is configured, to one Redis key per jti that expires with the token. The
per-request check answers from the request's one Redis read (utils/pipeline/shared_state.py) while
the mirror is in sync, so it costs no database query; when Redis errors, or lost its data, or
a mirror write failed, the check reads the table, so a Redis hiccup neither logs everyone out
nor lets a revoked token back in.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import redis
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import RevokedToken, db
from utils.pipeline import redis_client, shared_state

log = logging.getLogger("lms.auth")


_key = shared_state.jti_key


def revoke(payload: dict) -> bool:
    """Revoke the token whose decoded payload is given (idempotent; the caller commits).
    False when it was revoked already (of two requests spending one token, one gets True)."""
    jti = payload["jti"]
    expires = datetime.fromtimestamp(payload["exp"], tz=timezone.utc)
    sub = str(payload.get("sub", ""))
    fresh = True
    try:
        with db.session.begin_nested():
            db.session.add(RevokedToken(
                jti=jti, token_type=payload.get("type", "access"),
                user_id=int(sub) if sub.isdigit() else None, expires_at=expires,
            ))
    except IntegrityError:
        fresh = False  # already revoked
    client = redis_client.get()
    if client is not None:
        try:
            client.set(_key(jti), "1", ex=shared_state.seconds_until(expires))
        except redis.RedisError as exc:
            log.error("could not mirror a revocation to Redis: %s", exc)
            shared_state.distrust()
    return fresh


def is_revoked(jti: str) -> bool:
    known, value = shared_state.mirrored(_key(jti))
    if known:
        return value is not None
    return db.session.scalar(select(RevokedToken.id).where(RevokedToken.jti == jti)) is not None
