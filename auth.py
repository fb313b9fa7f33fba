"""JWT wiring, access decorators, and the audit log of what signed-in admins change.

Identities are user ids as strings (Flask-JWT-Extended requires a string subject); the role
rides along as a claim for clients, but every decision reads the user's current role, activity
and tokens_valid_after (from the Redis mirror of utils/pipeline/user_mirror.py, else the row),
so a demotion or a deactivation takes effect on the next request, not when the token expires.
The signed-in user is a `Caller` (those fields); the ORM row is loaded only when a view reads
another attribute of it.
"""
from __future__ import annotations

import time
from functools import wraps

from flask import g
from flask_jwt_extended import JWTManager, get_current_user, verify_jwt_in_request

from models import AuditLog, User, db
from utils.errors import Forbidden, Unauthorized
from utils.middleware import current_request_id, error_response
from utils.pipeline import token_blocklist, user_mirror
from utils.pipeline.client_address import client_ip
from utils.pipeline.user_mirror import Caller

jwt = JWTManager()


def _unauthorized(message: str, code: str):
    return error_response(401, code, message)


@jwt.user_identity_loader
def _identity(user):
    return str(user.id if isinstance(user, (User, Caller)) else user)


@jwt.additional_claims_loader
def _claims(user):
    # `iat` has whole seconds; a password reset must also refuse a token issued earlier in the
    # same second, so the issue time is carried in milliseconds too.
    claims = {"iat_ms": int(time.time() * 1000)}
    if isinstance(user, (User, Caller)):
        claims["role"] = user.role
    return claims


@jwt.token_in_blocklist_loader
def _token_refused(_header, payload) -> bool:
    """Revoked (logout), or issued before the user's tokens_valid_after (password change or
    reset, deactivation)."""
    if token_blocklist.is_revoked(payload["jti"]):
        return True
    try:
        caller = user_mirror.caller(int(payload["sub"]))
    except (KeyError, TypeError, ValueError):
        return True
    g.token_caller = caller  # for the user lookup that follows
    if caller is not None and caller.tokens_valid_after_ms is not None:
        issued_ms = payload.get("iat_ms", payload.get("iat", 0) * 1000)
        if issued_ms < caller.tokens_valid_after_ms:
            return True
    return False


@jwt.user_lookup_loader
def _load_user(_header, payload):
    try:
        user_id = int(payload["sub"])
    except (KeyError, TypeError, ValueError):
        return None
    caller = g.pop("token_caller", None)
    if caller is not None and caller.id == user_id:
        return caller
    return user_mirror.caller(user_id)


@jwt.user_lookup_error_loader
def _user_missing(_header, _payload):
    return _unauthorized("The account for this token no longer exists", "token_invalid")


@jwt.unauthorized_loader
def _missing_token(reason: str):
    return _unauthorized("Authentication required: send 'Authorization: Bearer <token>'", "token_missing")


@jwt.invalid_token_loader
def _invalid_token(reason: str):
    return _unauthorized("The token is invalid", "token_invalid")


@jwt.expired_token_loader
def _expired_token(_header, _payload):
    return _unauthorized("The token has expired", "token_expired")


@jwt.revoked_token_loader
def _revoked_token(_header, _payload):
    return _unauthorized("The token has been revoked", "token_revoked")


@jwt.needs_fresh_token_loader
def _needs_fresh(_header, _payload):
    return _unauthorized("A fresh login is required", "fresh_token_required")


@jwt.token_verification_failed_loader
def _verification_failed(_header, _payload):
    return _unauthorized("The token was refused", "token_invalid")


def current_user() -> Caller:
    """The signed-in user: `id`, `role`, `is_active` without a query; any other attribute
    reads the user row (loaded once a request). Pass `current_user().row()` where the ORM
    object itself is needed (a relationship, a session operation)."""
    return get_current_user()


def _require_active_user() -> Caller:
    user = get_current_user()
    if user is None:
        raise Unauthorized("The account for this token no longer exists", code="token_invalid")
    if not user.is_active:
        raise Unauthorized("This account has been deactivated", code="account_inactive")
    g.user_id = user.id
    return user


def login_required(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        verify_jwt_in_request()
        _require_active_user()
        return fn(*args, **kwargs)

    return wrapper


def roles_required(*roles: str):
    """Allow only authenticated, active users whose role is one of `roles`."""

    def decorator(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            verify_jwt_in_request()
            user = _require_active_user()
            if user.role not in roles:
                raise Forbidden(
                    f"This action requires the role {' or '.join(roles)}", code="role_required"
                )
            return fn(*args, **kwargs)

        return wrapper

    return decorator


admin_required = roles_required("admin")
instructor_required = roles_required("instructor", "admin")


def optional_user() -> Caller | None:
    """The caller if a valid token was sent, else None (public routes that show more to the
    enrolled)."""
    verify_jwt_in_request(optional=True)
    user = get_current_user()
    if user is not None and user.is_active:
        g.user_id = user.id
        return user
    return None


def audit(action: str, target_type: str | None = None, target_id: int | None = None,
          **details) -> None:
    """Record the signed-in admin's write in the audit log (committed with the change it
    describes). `before=` and `after=` in details hold the changed values."""
    details = {k: _jsonable(v) for k, v in details.items()}
    db.session.add(AuditLog(
        actor_id=current_user().id, action=action, target_type=target_type,
        target_id=target_id, details=details or None, ip_address=client_ip(),
        request_id=current_request_id()))


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
