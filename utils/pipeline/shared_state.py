"""What every host must agree on, read from Redis in one round trip a request.

The blocked addresses and revoked tokens live in PostgreSQL (blocked_ips, revoked_tokens) and
are mirrored in Redis, one key each. Before the view runs, `prefetch()` sends a single MGET for
everything this request may ask (in the same round trip as the rate limiter's counters, see
utils/pipeline/round_trip.py): the caller's address, the jti and the subject of the bearer
token (read, not yet verified, only to name the keys: its revocation, its user's access fields
mirrored by utils/pipeline/user_mirror.py), and for a guest's public catalog page its cached copy and
the catalog version (the keys utils/pipeline/catalog_cache.py asks for). The checks then
answer from that one reply.

Redis is trusted only while `lms:shared:synced` is present. It expires every SHARED_SYNC_SECONDS
(and is deleted when a mirror write fails); the first request that finds it missing brings the
mirror up to date from the database (rows added since the last sync; everything if Redis lost
its data) under a lock, and answers from the database meanwhile. So a Redis restart, flush or
eviction never lets a revoked token or a blocked address back in, and a failed mirror write is
repaired within SHARED_SYNC_SECONDS. When Redis errors, the checks read the database.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
from datetime import datetime, timezone

import redis
from flask import current_app, g, has_request_context, request
from sqlalchemy import or_, select

from models import BlockedIP, RevokedToken, db
from utils.helpers import utcnow
from utils.pipeline import redis_client
from utils.pipeline.client_address import client_ip

log = logging.getLogger("lms.shared")

SYNCED = "lms:shared:synced"   # present: the mirrors are complete (TTL SHARED_SYNC_SECONDS)
EPOCH = "lms:shared:epoch"     # no TTL: the last revoked_tokens id mirrored; gone: data lost
LOCK = "lms:shared:syncing"
OVERLAP = 1000  # ids re-mirrored before the epoch: rows that committed out of id order
NOT_READ = object()  # what `cached` returns for a key this request did not read
# The catalog's version (utils/pipeline/catalog_cache.py), which a sync sets where it is missing.
CATALOG_VERSION = "lms:catalog:version"


def catalog_version_start() -> int:
    """A missing catalog version's first value: the clock in microseconds, so a Redis that lost
    the version never gives an earlier value again."""
    return time.time_ns() // 1000


def ip_key(ip: str) -> str:
    return f"lms:blocked-ip:{ip}"


# A number as Redis keeps one for INCR (18 digits at most), nothing around it; and the same
# rule as a Lua function, for the scripts that check a stored value before they count on it
# (catalog_cache._BUMP, round_trip.REPAIR): `IS_STORED_INT .. "(value)"` is true or false.
_STORED_INT = re.compile(rb"-?[0-9]{1,18}")
IS_STORED_INT = ("(function(v) local d = v and string.match(v, '^%-?(%d+)$') "
                 "if not d then return false end return string.len(d) <= 18 end)")


def stored_int(value) -> int | None:
    """`value` read from Redis (bytes, or already a number) as a number; None where it is
    missing or is not one (an operator's typo, a restore of the wrong key, a hostile write to
    a shared Redis): the caller treats it as missing, never as a reason to fail a request."""
    if value is None or isinstance(value, int):
        return value
    raw = value.encode() if isinstance(value, str) else bytes(value)
    return int(raw) if _STORED_INT.fullmatch(raw) else None


def jti_key(jti: str) -> str:
    return f"lms:revoked-jti:{jti}"


def user_key(user_id) -> str:
    """The mirror of a user's access fields (utils/pipeline/user_mirror.py)."""
    return f"lms:user:{user_id}"


def _bearer_keys() -> list[str]:
    """The keys named by the bearer token's jti and subject, unverified: only used to name
    keys to read (the token is verified before anything read is used)."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return []
    try:
        payload = header[7:].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        jti, sub = claims.get("jti"), claims.get("sub")
    except (IndexError, ValueError, TypeError, AttributeError):
        return []
    keys = []
    if isinstance(jti, str) and 0 < len(jti) <= 64:
        keys.append(jti_key(jti))
    if isinstance(sub, str) and sub.isdigit() and len(sub) <= 18:
        keys.append(user_key(int(sub)))
    return keys


def request_keys(extra_keys=()) -> list[str]:
    """The keys `prefetch` reads for this request, in its order (SYNCED first)."""
    return [SYNCED, ip_key(client_ip()), *_bearer_keys(), *extra_keys]


def prefetch(extra_keys=(), fetched=None) -> None:
    """before_request: one MGET for this request's shared state (see the module's docstring),
    with `extra_keys` (the catalog cache's) read in the same round trip; or, as `fetched`,
    the (keys, values or the Redis error) of that MGET already sent in the request's round
    trip with the rate limiter's counters (utils/pipeline/round_trip.py)."""
    g.shared_state = None
    client = redis_client.get()
    if client is None:
        return
    if fetched is None:
        keys = request_keys(extra_keys)
        try:
            values = client.mget(keys)
        except redis.RedisError as exc:
            values = exc
    else:
        keys, values = fetched
    if isinstance(values, redis.RedisError):
        log.warning("shared state unavailable, reading the database: %s", values)
        return
    g.shared_state = dict(zip(keys, values))
    if values[0] is None:
        sync(client)


def cached(key: str):
    """The prefetched value of a cache key (no trust needed): bytes, None, or NOT_READ."""
    state = g.get("shared_state") if has_request_context() else None
    if state is None or key not in state:
        return NOT_READ
    return state[key]


def mirrored(key: str):
    """(True, value) when Redis's mirror answers for `key` in this request; (False, None) when
    the caller must read the database (no Redis, Redis down, mirror not in sync, not
    prefetched)."""
    state = g.get("shared_state") if has_request_context() else None
    if state is None or key not in state or state[SYNCED] is None:
        return False, None
    return True, state[key]


def generation() -> bytes | None:
    """The mirror's generation this request saw (the value of SYNCED; a new one each sync),
    None when it is not in sync or was not read."""
    state = g.get("shared_state") if has_request_context() else None
    return None if state is None else state[SYNCED]


def distrust() -> None:
    """A mirror write failed: make every host read the database until the next sync."""
    client = redis_client.get()
    if client is not None:
        try:
            client.delete(SYNCED)
        except redis.RedisError:
            pass  # Redis is down: the checks read the database anyway; SYNCED will expire


def sync(client=None) -> bool:
    """Bring the Redis mirrors up to date from the database (one host at a time)."""
    client = client or redis_client.get()
    if client is None:
        return False
    try:
        if not client.set(LOCK, "1", nx=True, ex=30):
            return False
        try:  # not a number, or a key of another type (WRONGTYPE): as if lost, a full rebuild
            epoch = stored_int(client.get(EPOCH))
        except redis.ResponseError:
            epoch = None  # the SET below replaces it whatever its type
        after = max(epoch - OVERLAP, 0) if epoch is not None else 0
        now = utcnow()
        tokens = db.session.execute(
            select(RevokedToken.id, RevokedToken.jti, RevokedToken.expires_at)
            .where(RevokedToken.id > after, RevokedToken.expires_at > now)
            .order_by(RevokedToken.id)).all()
        blocks = {ip: (reason, until) for ip, reason, until in db.session.execute(
            select(BlockedIP.ip_address, BlockedIP.reason, BlockedIP.blocked_until).where(
                or_(BlockedIP.blocked_until.is_(None), BlockedIP.blocked_until > now)))}
        db.session.rollback()
        pipe = client.pipeline(transaction=False)
        for _id, jti, expires in tokens:
            pipe.set(jti_key(jti), "1", ex=seconds_until(expires))
        wanted = {ip_key(ip) for ip in blocks}
        for key in client.scan_iter(ip_key("*"), count=1000):
            if key.decode() not in wanted:
                pipe.delete(key)  # lifted in the database, the mirror's delete had failed
        for ip, (reason, until) in blocks.items():
            pipe.set(ip_key(ip), reason or "blocked",
                     ex=seconds_until(until) if until is not None else None)
        newest = max([row[0] for row in tokens], default=epoch or 0)
        pipe.set(EPOCH, max(newest, epoch or 0))
        pipe.set(CATALOG_VERSION, catalog_version_start(), nx=True)
        # A new generation each time: the user mirror's values of the last one stop counting.
        pipe.set(SYNCED, secrets.token_hex(8), ex=current_app.config["SHARED_SYNC_SECONDS"])
        pipe.delete(LOCK)
        pipe.execute()
        log.info("shared state mirrored: %d revoked token(s), %d block(s)%s", len(tokens),
                 len(blocks), "" if epoch is not None else " (full rebuild)")
        return True
    except redis.RedisError as exc:
        log.warning("shared state not mirrored: %s", exc)
        return False


def seconds_until(moment: datetime) -> int:
    """A mirror key's TTL: it lives as long as the row it mirrors (at least a second)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(1, int((moment - datetime.now(timezone.utc)).total_seconds()) + 1)
