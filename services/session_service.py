"""Logins and their tokens: rotation of the refresh token, reuse detection, logout.

A sign-in starts a login (a row of login_sessions; its id rides in both tokens as the `sid`
claim). The login has exactly one refresh token that may be exchanged (`refresh_jti`): each
refresh swaps it for a new one in a single conditional UPDATE, so of two refreshes with the
same token at once only one gets a new pair (PostgreSQL makes the second wait on the row and
then find it changed). A refresh token of the login that is no longer the current one has been
used already: presenting it again is the reuse the OAuth 2.0 Security BCP tells us to answer by
ending the whole login, the newest tokens included.

Ending a login revokes, through the JWT blocklist (utils/pipeline/token_blocklist.py: the
revoked_tokens table and its Redis mirror, so every worker and host refuses them on the next
request), every access token it issued that is still alive (login_tokens) and its current
refresh token. Rotated refresh tokens need no blocklist entry: /auth/refresh refuses them by
the login's row.

Tokens without a `sid` (issued before logins were recorded, or made by tests and tools) keep
working; such a refresh token is revoked when exchanged and its new pair starts a login.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token
from sqlalchemy import or_, select, update

from models import LoginSession, LoginToken, User, db
from utils.errors import Unauthorized
from utils.helpers import utcnow
from utils.pipeline import token_blocklist

log = logging.getLogger("lms.auth")


def _lifetime(setting: str) -> timedelta:
    value = current_app.config[setting]
    return value if isinstance(value, timedelta) else timedelta(seconds=int(value))


def _mint(user: User, session_id: str, refresh_jti: str) -> dict:
    """A new access token and the refresh token `refresh_jti` of the login; the access token
    is recorded so that ending the login revokes it."""
    access_jti = str(uuid.uuid4())
    claims = {"sid": session_id}
    access = create_access_token(user, additional_claims={**claims, "jti": access_jti})
    refresh = create_refresh_token(user, additional_claims={**claims, "jti": refresh_jti})
    db.session.add(LoginToken(
        session_id=session_id, jti=access_jti,
        expires_at=utcnow() + _lifetime("JWT_ACCESS_TOKEN_EXPIRES") + timedelta(seconds=1)))
    return {"access_token": access, "refresh_token": refresh}


def start(user: User, ip: str | None = None) -> dict:
    """Start a login for `user`: its first access and refresh token (the caller commits)."""
    session_id, refresh_jti = str(uuid.uuid4()), str(uuid.uuid4())
    db.session.add(LoginSession(
        id=session_id, user_id=user.id, refresh_jti=refresh_jti,
        ip_address=ip[:45] if ip else None, created_at=utcnow(),
        expires_at=utcnow() + _lifetime("JWT_REFRESH_TOKEN_EXPIRES")))
    db.session.flush()
    return _mint(user, session_id, refresh_jti)


def rotate(payload: dict, user: User, ip: str | None = None) -> dict:
    """Exchange the refresh token whose verified payload is given for a new pair. A token of
    the login that was rotated already ends the login (committed here: the ending must stand
    although the request fails)."""
    if not user.is_active:
        raise Unauthorized("This account has been deactivated", code="account_inactive")
    session_id = payload.get("sid")
    if not isinstance(session_id, str):
        # From before logins were recorded: spend it (once, also when raced) and start one.
        if not token_blocklist.revoke(payload):
            raise Unauthorized("The token has been revoked", code="token_revoked")
        return start(user, ip)
    new_jti, now = str(uuid.uuid4()), utcnow()
    swapped = db.session.execute(
        update(LoginSession)
        .where(LoginSession.id == session_id, LoginSession.user_id == user.id,
               LoginSession.refresh_jti == payload["jti"], LoginSession.ended_at.is_(None))
        .values(refresh_jti=new_jti, refreshed_at=now,
                expires_at=now + _lifetime("JWT_REFRESH_TOKEN_EXPIRES"))
    ).rowcount
    if swapped == 1:
        return _mint(user, session_id, new_jti)
    if end(session_id, user.id, "reuse"):
        db.session.commit()
        log.warning("login %s of user %s ended: a rotated refresh token was used again",
                    session_id, user.id)
        raise Unauthorized("This refresh token was used already; the login has been ended "
                           "for safety: sign in again", code="refresh_token_reused")
    raise Unauthorized("The token has been revoked", code="token_revoked")


def end(session_id: str, user_id: int, reason: str) -> bool:
    """End the login `session_id` of `user_id`: revoke its live access tokens and its refresh
    token on every host. False when there is no such login or it had ended (the caller
    commits)."""
    now = utcnow()
    current = db.session.execute(
        update(LoginSession)
        .where(LoginSession.id == session_id, LoginSession.user_id == user_id,
               LoginSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
        .returning(LoginSession.refresh_jti, LoginSession.expires_at)
    ).first()
    if current is None:
        return False
    refresh_jti, refresh_expires = current
    _revoke(refresh_jti, "refresh", user_id, refresh_expires)
    for jti, expires in db.session.execute(
            select(LoginToken.jti, LoginToken.expires_at)
            .where(LoginToken.session_id == session_id, LoginToken.expires_at > now)):
        _revoke(jti, "access", user_id, expires)
    return True


def _revoke(jti: str, token_type: str, user_id: int, expires: datetime) -> None:
    token_blocklist.revoke({"jti": jti, "type": token_type, "sub": str(user_id),
                            "exp": expires.timestamp()})


def end_presented(payload: dict, reason: str = "logout") -> None:
    """Log out with this token (access or refresh): its login ends, both tokens; a token
    without a login is revoked alone (the caller commits)."""
    session_id, subject = payload.get("sid"), str(payload.get("sub", ""))
    if isinstance(session_id, str) and subject.isdigit():
        end(session_id, int(subject), reason)
    token_blocklist.revoke(payload)


def end_all(user_id: int, reason: str) -> None:
    """Mark every login of the user ended (a password change or reset, a deactivation): their
    tokens are refused already by users.tokens_valid_after (the caller commits)."""
    db.session.execute(
        update(LoginSession)
        .where(LoginSession.user_id == user_id, LoginSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason))


def decode_refresh(token: str | None, user_id: str) -> dict | None:
    """The payload of `token` when it is a refresh token of `user_id` (expired or not), else
    None: a logout's second token, which cannot act for another user."""
    if not token:
        return None
    try:
        payload = decode_token(token, allow_expired=True)
    except Exception:  # a malformed or forged token cannot be used anyway
        return None
    if payload.get("sub") == user_id and payload.get("type") == "refresh":
        return payload
    return None


def prune(before: datetime | None = None) -> int:
    """Delete logins whose refresh token has expired or that ended before the longest token
    lifetime ago, with their token rows (what a maintenance task calls)."""
    now = utcnow()
    cutoff = before or now - max(_lifetime("JWT_ACCESS_TOKEN_EXPIRES"),
                                 _lifetime("JWT_REFRESH_TOKEN_EXPIRES"))
    stale = select(LoginSession.id).where(or_(LoginSession.expires_at < now,
                                              LoginSession.ended_at < cutoff))
    ids = list(db.session.scalars(stale.limit(10_000)))
    if ids:
        db.session.execute(LoginToken.__table__.delete().where(LoginToken.session_id.in_(ids)))
        db.session.execute(LoginSession.__table__.delete().where(LoginSession.id.in_(ids)))
    return len(ids)
