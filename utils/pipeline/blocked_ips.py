"""Blocked addresses and the security events that block one.

An address is blocked when, within IP_BLOCK_WINDOW_SECONDS, it fails logins for
IP_BLOCK_MAX_ACCOUNTS distinct accounts or sends IP_BLOCK_MAX_UNSAFE_INPUTS high-confidence
attacks: an injection pattern in a structured field (an e-mail, a slug, an id, a filter), where
prose never belongs. The same patterns in free text (a bio, a description) are refused, counted
and logged, but never block: ordinary prose ("use SELECT a UNION SELECT b") trips them too.
Health probes are never refused, so a block cannot take an instance out of its load balancer. Events are counted in the database; blocks are recorded in
the database (the admin's list) and mirrored in Redis when configured, which is what the
per-request check reads while the mirror is in sync (utils/pipeline/shared_state.py). Without Redis
the check reads the database.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

import redis
from flask import current_app, request
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from models import BlockedIP, SecurityEvent, db
from utils.errors import Forbidden
from utils.helpers import utcnow
from utils.pipeline import redis_client, shared_state
from utils.pipeline.client_address import client_ip

log = logging.getLogger("lms.security")


_key = shared_state.ip_key


def is_blocked(ip: str) -> bool:
    known, value = shared_state.mirrored(_key(ip))
    if known:
        return value is not None
    now = utcnow()
    try:
        return db.session.scalar(
            select(BlockedIP.id).where(
                BlockedIP.ip_address == ip,
                or_(BlockedIP.blocked_until.is_(None), BlockedIP.blocked_until > now),
            )
        ) is not None
    except SQLAlchemyError as exc:
        # With the database down the request cannot do anything anyway; let the route answer
        # for itself (readiness probes must say 503, not fail here with a 500).
        db.session.rollback()
        log.error("blocked-ip check skipped, database unavailable: %s", type(exc).__name__)
        return False


def block_ip(ip: str, *, seconds: int | None, reason: str, by_user_id: int | None = None) -> BlockedIP:
    """Block `ip` for `seconds` (None: until lifted). Commits: a block must not be lost with
    the request that triggered it."""
    until = utcnow() + timedelta(seconds=seconds) if seconds else None
    row = db.session.scalar(select(BlockedIP).where(BlockedIP.ip_address == ip))
    if row is None:
        row = BlockedIP(ip_address=ip)
        db.session.add(row)
    row.reason, row.blocked_until, row.created_by_id = reason[:255], until, by_user_id
    db.session.commit()
    client = redis_client.get()
    if client is not None:
        try:
            client.set(_key(ip), reason[:255], ex=seconds or None)
        except redis.RedisError as exc:
            log.error("could not mirror the block of %s to Redis: %s", ip, exc)
            shared_state.distrust()
    log.warning("blocked IP %s until %s: %s", ip, until or "lifted", reason)
    return row


def unblock_ip(ip: str) -> bool:
    deleted = db.session.execute(delete(BlockedIP).where(BlockedIP.ip_address == ip)).rowcount
    mirrored = 0
    client = redis_client.get()
    if client is not None:
        try:
            mirrored = client.delete(_key(ip))
        except redis.RedisError as exc:
            log.error("could not lift the Redis block of %s: %s", ip, exc)
            shared_state.distrust()
    return bool(deleted or mirrored)


def active_blocks():
    now = utcnow()
    return (
        select(BlockedIP)
        .where(or_(BlockedIP.blocked_until.is_(None), BlockedIP.blocked_until > now))
        .order_by(BlockedIP.created_at.desc(), BlockedIP.id.desc())
    )


def _window_start() -> datetime:
    return utcnow() - timedelta(seconds=current_app.config["IP_BLOCK_WINDOW_SECONDS"])


def _record(ip: str, kind: str, subject: str, counted, limit_setting: str, reason: str,
            *conditions) -> None:
    """Commit a security event, then block the address once `counted` (an aggregate over its
    events of this kind in the window, meeting `conditions`) reaches config[`limit_setting`]."""
    db.session.add(SecurityEvent(kind=kind, ip_address=ip, subject=subject[:255]))
    db.session.commit()
    seen = db.session.scalar(select(counted).where(
        SecurityEvent.ip_address == ip,
        SecurityEvent.kind == kind,
        SecurityEvent.created_at >= _window_start(),
        *conditions,
    ))
    if seen >= current_app.config[limit_setting]:
        block_ip(ip, seconds=current_app.config["IP_BLOCK_SECONDS"],
                 reason=reason.format(seen))


def record_login_failure(ip: str, email: str) -> None:
    """Count a failed login; block the address once it has failed for too many accounts."""
    _record(ip, "login_failure", email, func.count(func.distinct(SecurityEvent.subject)),
            "IP_BLOCK_MAX_ACCOUNTS", "failed logins for {} accounts")


# The subject of an injection pattern found in free text: counted and logged, never blocking.
FREE_TEXT = "text:"


def record_unsafe_input(ip: str, fields: list[str]) -> None:
    """Count a request that sent an injection pattern where only a structured value belongs
    (a high-confidence attack); block a persistent address."""
    log.warning("injection attempt from %s in %s", ip, ",".join(fields))
    _record(ip, "unsafe_input", ",".join(fields), func.count(SecurityEvent.id),
            "IP_BLOCK_MAX_UNSAFE_INPUTS", "{} injection attempts",
            SecurityEvent.subject.not_like(f"{FREE_TEXT}%"))


def record_unsafe_text(ip: str, fields: list[str]) -> None:
    """Count and log free text that tripped the injection patterns; never blocks (prose about
    SQL or HTML trips them as well as an attack does)."""
    subject = FREE_TEXT + ",".join(fields)
    log.info("injection pattern in free text from %s: %s", ip, subject)
    db.session.add(SecurityEvent(kind="unsafe_input", ip_address=ip, subject=subject[:255]))
    db.session.commit()


def _is_health_probe() -> bool:
    endpoint = request.endpoint or ""
    return endpoint.startswith("health.")


def refuse_blocked_ip() -> None:
    """A blocked address gets 403 on every route but the health probes (after the request's
    shared state is read: utils/pipeline/hooks.py)."""
    if not _is_health_probe() and is_blocked(client_ip()):
        raise Forbidden("Requests from your network address are temporarily blocked",
                        code="ip_blocked")
