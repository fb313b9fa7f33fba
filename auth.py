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
from datetime import timedelta
from functools import wraps

from flask import g
from flask_jwt_extended import JWTManager, get_current_user, verify_jwt_in_request
from flask_jwt_extended.config import config as jwt_config

from models import AuditLog, User, db
from utils.errors import Forbidden, Unauthorized
from utils.middleware import current_request_id, error_response
from utils.pipeline import token_blocklist, user_mirror
from utils.pipeline.client_address import client_ip
from utils.pipeline.user_mirror import Caller


class _VerifiedTokens(JWTManager):
    """Flask-JWT-Extended's manager, remembering in each process the claims of the access
    tokens it has verified, so that a token sent again is not parsed and checked again.

    Flask-JWT-Extended decodes a token three times to verify it (claims unverified, header,
    then claims with the signature), and PyJWT checks every character of each segment in
    Python: ~0.3 ms a request, for the same answer each time the same client sends the same
    token. A token's claims depend only on its bytes and the verification settings, both in
    the key, except expiry, which is checked again on every use (`nbf` and `iat` can only
    become more valid as time passes). An invalid token is never remembered. Revocation,
    deactivation and the user's current role are decided after this, on every request, as
    before (`_token_refused`, `_load_user`). A plain memo, not shared state: a process that
    does not have it verifies the token from scratch.
    """

    KEPT = 2048  # ~3 MB at most; the oldest is dropped first

    def __init__(self, app=None, add_context_processor: bool = False):
        self._verified: dict[tuple, dict] = {}
        super().__init__(app, add_context_processor)

    def _decode_jwt_from_config(self, encoded_token: str, csrf_value=None,
                                allow_expired: bool = False) -> dict:
        if csrf_value is not None or allow_expired or not isinstance(encoded_token, str):
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        leeway = jwt_config.leeway
        if isinstance(leeway, timedelta):
            leeway = leeway.total_seconds()
        audience = jwt_config.decode_audience
        key = (encoded_token, jwt_config.decode_key, tuple(jwt_config.decode_algorithms),
               audience if isinstance(audience, (str, type(None))) else tuple(audience),
               jwt_config.decode_issuer, leeway, jwt_config.identity_claim_key,
               jwt_config.verify_sub)
        claims = self._verified.get(key)
        if claims is not None:
            expires = claims.get("exp")
            if expires is None or time.time() < expires + leeway:
                return dict(claims)
            del self._verified[key]  # expired: the full decode below says so
        claims = super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        if len(self._verified) >= self.KEPT:
            self._verified.pop(next(iter(self._verified)))
        self._verified[key] = dict(claims)
        return claims


jwt = _VerifiedTokens()


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
