"""`Idempotency-Key`: client-side exactly-once for the POSTs that create money or access, on the model of Stripe's
API and the IETF httpapi Idempotency-Key draft.

A request carrying `Idempotency-Key` claims (user, key) in PostgreSQL before it runs; the
claim is committed at once, so a concurrent request with the same key finds it:
- the same key and request again within IDEMPOTENCY_KEY_HOURS: the first answer, replayed
  (never a second object);
- the same key with another request (route, path arguments or body): 422;
- the same key while the first request still runs: 409, retry shortly;
- the first request answered 5xx: the key is released, the retry runs again.
A key older than IDEMPOTENCY_KEY_HOURS is forgotten (and purged by the worker's tick). A key
whose request died holding it (a killed worker) is taken over after IDEMPOTENCY_LOCK_SECONDS.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any

from flask import after_this_request, current_app, request
from flask_jwt_extended import get_current_user
from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from models import IdempotencyKey, db
from utils.errors import BadRequest, Conflict, ValidationError
from utils.helpers import utcnow

log = logging.getLogger("lms.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Visible ASCII: a UUID, a ULID, any client's random token. (The draft sends the key as a
# structured-field string, "quoted"; the quotes are taken off.)
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
KEPT_HEADERS = ("Location",)


@dataclass(frozen=True)
class Replay:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass(frozen=True)
class Claim:
    id: int
    replay: Replay | None = None


def parse_key(value: str) -> str:
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _KEY_RE.match(key):
        raise BadRequest(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} visible ASCII characters "
                         "(a UUID, say)", code="invalid_idempotency_key")
    return key


def fingerprint(endpoint: str, view_args: dict, body: Any) -> str:
    """What makes two requests "the same": the route (aliases count as one), its path
    arguments and the JSON body, whatever its key order or spacing."""
    canonical = json.dumps({"endpoint": endpoint, "args": view_args, "body": body},
                           sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lifetime() -> timedelta:
    return timedelta(hours=current_app.config["IDEMPOTENCY_KEY_HOURS"])


def _lease() -> timedelta:
    return timedelta(seconds=current_app.config["IDEMPOTENCY_LOCK_SECONDS"])


def claim(user_id: int, key: str, fingerprint_: str, endpoint: str) -> Claim:
    """Claim (user, key) for this request, or answer from an earlier one. The caller commits
    the claim before running the request."""
    now = utcnow()
    row = IdempotencyKey(user_id=user_id, key=key, fingerprint=fingerprint_,
                         endpoint=endpoint[:100], status="in_progress", created_at=now,
                         locked_until=now + _lease())
    try:
        with db.session.begin_nested():
            db.session.add(row)
        return Claim(row.id)
    except IntegrityError:
        pass  # the key is known: what became of its request?
    held = db.session.scalar(select(IdempotencyKey).where(
        IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
        .with_for_update().execution_options(populate_existing=True))
    if held is None:  # released a moment ago by a request that failed: retry shortly
        raise _in_use()
    if held.created_at <= now - _lifetime():  # forgotten: a new request under an old key
        held.fingerprint, held.endpoint, held.created_at = fingerprint_, endpoint[:100], now
        held.status, held.locked_until, held.completed_at = "in_progress", now + _lease(), None
        held.response_status = held.response_body = held.response_headers = None
        return Claim(held.id)
    if held.fingerprint != fingerprint_:
        raise ValidationError(f"This {HEADER} was used with a different request; use a new key "
                              "for a new request", code="idempotency_key_reused")
    if held.status == "completed":
        return Claim(held.id, Replay(held.response_status, held.response_body,
                                     dict(held.response_headers or {})))
    if held.locked_until > now:
        raise _in_use()
    held.locked_until = now + _lease()  # its request died holding it: this one takes over
    return Claim(held.id)


def _in_use() -> Conflict:
    return Conflict(f"A request with this {HEADER} is still being processed; retry shortly",
                    code="idempotency_key_in_use", headers={"Retry-After": "1"})


def finish(claim_id: int, status: int, body: Any, headers: dict[str, str]) -> None:
    """Keep the answer for replays, or release the key when there is nothing worth keeping
    (a 5xx, an answer that is not JSON): the client's retry then runs the request again. The
    caller commits."""
    row = db.session.get(IdempotencyKey, claim_id)
    if row is None:
        return
    if status >= 500 or body is None:
        db.session.delete(row)
        return
    row.status = "completed"
    row.response_status = status
    row.response_body = body
    row.response_headers = {k: v for k, v in headers.items() if k in KEPT_HEADERS}
    row.completed_at = utcnow()


def purge_expired() -> int:
    """Forget keys older than IDEMPOTENCY_KEY_HOURS; returns how many. The caller commits."""
    result = db.session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.created_at <= utcnow() - _lifetime()))
    return result.rowcount or 0


# --- the routes' side ---------------------------------------------------------------------------

class IdempotencyHeaders(BaseModel):
    """The optional header of the POSTs that create money or access."""

    model_config = {"populate_by_name": True}

    idempotency_key: str | None = Field(
        None, alias="Idempotency-Key", min_length=1, max_length=MAX_KEY_LENGTH,
        description="A key of the client's choosing (a UUID): the same key from the same user "
                    "within IDEMPOTENCY_KEY_HOURS gets the first answer again (marked "
                    "`Idempotent-Replayed: true`); with another body it is 422, while the "
                    "first request still runs 409.")


def idempotent(view):
    """Honour `Idempotency-Key` on a signed-in route. Put it under `validate(...)` and the
    access decorator: a request refused by validation or access claims no key."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        header = request.headers.get(HEADER)
        if header is None:
            return view(*args, **kwargs)
        key = parse_key(header)
        claimed = claim(get_current_user().id, key,
                        fingerprint(request.endpoint, request.view_args or {},
                                    request.get_json(silent=True)),
                        request.endpoint)
        if claimed.replay is not None:
            db.session.rollback()
            return claimed.replay.body, claimed.replay.status, {
                **claimed.replay.headers, REPLAYED_HEADER: "true"}
        db.session.commit()  # from here on, a concurrent request with this key finds it

        @after_this_request
        def keep_answer(response):
            # The view committed what it did; whatever else the session holds belongs to a
            # request that failed, and goes.
            db.session.rollback()
            try:
                finish(claimed.id, response.status_code, response.get_json(silent=True),
                       dict(response.headers))
                db.session.commit()
            except SQLAlchemyError:  # the key stays claimed until its lease runs out
                db.session.rollback()
                log.exception("could not keep the answer for an idempotency key")
            return response

        return view(*args, **kwargs)

    wrapper.idempotent = True  # routes/docs.py documents the replay header of its answers
    return wrapper
