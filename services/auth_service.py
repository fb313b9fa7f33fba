"""Accounts: registration (with or without a phone code), login with lockout, tokens, logout,
password change and reset, Google sign-in, and the profile. Routes call these; so can tests.

Each function leaves committing to its caller unless it says otherwise: lockout counters and
security events are committed here because they must survive the failed request that
produced them.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token
from sqlalchemy import select, update

from models import PasswordResetToken, User, db
from services import email_service, file_service, sms_service
from utils.errors import (
    Conflict,
    Forbidden,
    Locked,
    ServiceUnavailable,
    Unauthorized,
    ValidationError,
)
from utils import passwords
from utils.helpers import utcnow
from utils.pipeline import blocked_ips, hash_slots, token_blocklist
from utils.validators import normalise_email, password_problems

log = logging.getLogger("lms.auth")

PROFILE_FIELDS = ("first_name", "last_name", "bio", "headline", "date_of_birth", "country",
                  "city", "website")


# --- helpers ----------------------------------------------------------------------------------

def _check_password_policy(password: str, email: str, field: str = "password") -> None:
    problems = password_problems(password, email)
    if problems:
        raise ValidationError("The password is too weak",
                              details={field: "Password " + "; ".join(problems)})


def _ensure_unique(email: str, phone: str | None) -> None:
    if db.session.scalar(select(User.id).where(User.email == email)):
        raise Conflict("An account with this e-mail already exists", code="email_taken",
                       details={"email": "already registered"})
    if phone and db.session.scalar(select(User.id).where(User.phone_number == phone)):
        raise Conflict("An account with this phone number already exists", code="phone_taken",
                       details={"phone_number": "already registered"})


def _now_ms() -> datetime:
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def revoke_all_tokens(user: User) -> None:
    """Every token issued to `user` before now stops working (on every worker: the check reads
    the user row)."""
    user.tokens_valid_after = _now_ms()


def issue_tokens(user: User) -> dict:
    return {
        "access_token": create_access_token(user),
        "refresh_token": create_refresh_token(user),
        "token_type": "Bearer",
        "expires_in": current_app.config["JWT_ACCESS_TOKEN_EXPIRES"],
        "user": user.to_dict(private=True),
    }


# --- registration -----------------------------------------------------------------------------

def send_registration_code(phone: str) -> None:
    if db.session.scalar(select(User.id).where(User.phone_number == phone)):
        raise Conflict("An account with this phone number already exists", code="phone_taken",
                       details={"phone_number": "already registered"})
    sms_service.send_otp(phone)


def verify_phone(phone: str, code: str) -> None:
    sms_service.check_otp(phone, code)


def register(*, email: str, password: str, first_name: str, last_name: str,
             role: str = "student", phone_number: str | None = None,
             phone_verified: bool = False) -> User:
    """Create an account. With OTP_REQUIRED, the phone must have been verified in the window
    (or `phone_verified` is passed by the one-step OTP flow)."""
    email = normalise_email(email)
    _ensure_unique(email, phone_number)
    _check_password_policy(password, email)
    if not phone_verified and phone_number:
        phone_verified = sms_service.take_verified_phone(phone_number) is not None
    if current_app.config["OTP_REQUIRED"] and not phone_verified:
        detail = ("is required" if not phone_number
                  else "has not been verified: request a code and verify it first")
        raise ValidationError("A verified phone number is required to register",
                              code="phone_not_verified", details={"phone_number": detail})
    user = User(email=email, first_name=first_name, last_name=last_name, role=role,
                phone_number=phone_number, is_phone_verified=phone_verified, is_active=True)
    user.set_password(password)
    db.session.add(user)
    db.session.flush()
    return user


def register_with_code(*, phone_number: str, code: str, **fields) -> User:
    """The one-step flow: check the code and create the account together."""
    email = normalise_email(fields["email"])
    # Refuse what would fail anyway before spending the code.
    _ensure_unique(email, phone_number)
    _check_password_policy(fields["password"], email)
    sms_service.check_otp(phone_number, code)
    sms_service.take_verified_phone(phone_number)
    return register(phone_number=phone_number, phone_verified=True, **fields)


# --- login, lockout, tokens -------------------------------------------------------------------

def _equalise_timing(password: str) -> None:
    """Spend the time a real check costs, so an unknown e-mail is not told apart by speed."""
    with hash_slots.slot():
        passwords.verify_against_nothing(password)


def _locked_error(until: datetime) -> Locked:
    seconds = max(1, int((until - utcnow()).total_seconds()))
    return Locked(
        f"Too many failed logins: the account is locked for {max(1, seconds // 60)} more "
        "minute(s)", headers={"Retry-After": str(seconds)},
        details={"locked_until": until.isoformat(timespec="seconds")})


def _invalid_credentials() -> Unauthorized:
    return Unauthorized("Invalid e-mail or password", code="invalid_credentials")


def authenticate(email: str, password: str, ip: str) -> User:
    """The user for these credentials, or Unauthorized / Locked / Forbidden. Failures are
    counted in the database (every worker agrees) and committed."""
    cfg = current_app.config
    email = email.strip().lower()
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None or not user.password_hash:
        _equalise_timing(password)
        blocked_ips.record_login_failure(ip, email)
        raise _invalid_credentials()
    now = utcnow()
    if user.locked_until is not None:
        if user.locked_until > now:
            raise _locked_error(user.locked_until)
        # The lock has run out: start counting afresh.
        user.locked_until, user.failed_login_attempts = None, 0
        db.session.commit()
    if not user.check_password(password):
        failures = db.session.scalar(
            update(User).where(User.id == user.id)
            .values(failed_login_attempts=User.failed_login_attempts + 1)
            .returning(User.failed_login_attempts)
        )
        locked_until = None
        if failures >= cfg["LOGIN_MAX_FAILURES"]:
            locked_until = now + timedelta(seconds=cfg["LOGIN_LOCKOUT_SECONDS"])
            db.session.execute(update(User).where(User.id == user.id)
                               .values(locked_until=locked_until, failed_login_attempts=0))
            log.warning("account %s locked after %s failed logins", user.id, failures)
        db.session.commit()
        blocked_ips.record_login_failure(ip, email)
        if locked_until is not None:
            raise _locked_error(locked_until)
        raise _invalid_credentials()
    if not user.is_active:
        raise Forbidden("This account has been deactivated", code="account_inactive")
    user.failed_login_attempts = 0
    user.last_login_at = now
    return user


def refresh_access_token(user: User) -> dict:
    if not user.is_active:
        raise Unauthorized("This account has been deactivated", code="account_inactive")
    return {"access_token": create_access_token(user), "token_type": "Bearer",
            "expires_in": current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]}


def logout(current_payload: dict, refresh_token: str | None) -> None:
    """Revoke the presented token and, when given, the refresh token of the same user."""
    token_blocklist.revoke(current_payload)
    if refresh_token:
        try:
            payload = decode_token(refresh_token, allow_expired=True)
        except Exception:  # a malformed refresh token cannot be used anyway
            return
        if payload.get("sub") == current_payload.get("sub") and payload.get("type") == "refresh":
            token_blocklist.revoke(payload)


# --- passwords --------------------------------------------------------------------------------

def change_password(user: User, current_password: str, new_password: str) -> dict:
    if not user.check_password(current_password):
        raise ValidationError("The current password is incorrect", code="invalid_password",
                              details={"current_password": "is incorrect"})
    if current_password == new_password:
        raise ValidationError("The new password must differ from the current one",
                              details={"new_password": "is the same as the current password"})
    _check_password_policy(new_password, user.email, "new_password")
    user.set_password(new_password)
    revoke_all_tokens(user)
    return issue_tokens(user)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def request_password_reset(email: str) -> None:
    """E-mail a single-use reset link if the account exists. Says nothing either way, and
    delivery failures are logged, not shown, so the answer never reveals an account."""
    cfg = current_app.config
    try:
        email = normalise_email(email)
    except ValueError:
        return
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None or not user.is_active:
        return
    now = utcnow()
    db.session.execute(
        update(PasswordResetToken)
        .where(PasswordResetToken.user_id == user.id, PasswordResetToken.used_at.is_(None))
        .values(used_at=now)
    )
    token = secrets.token_urlsafe(32)
    db.session.add(PasswordResetToken(
        user_id=user.id, token_hash=_token_hash(token),
        expires_at=now + timedelta(seconds=cfg["PASSWORD_RESET_TOKEN_SECONDS"])))
    db.session.commit()
    base = cfg.get("PASSWORD_RESET_URL") or f"{cfg['FRONTEND_URL_STUDENTS'].rstrip('/')}/reset-password"
    link = f"{base}/{token}"
    minutes = cfg["PASSWORD_RESET_TOKEN_SECONDS"] // 60
    text = (f"Hello {user.first_name or 'there'},\n\n"
            f"Someone asked to reset the password of your {cfg['APP_NAME']} account.\n"
            f"To choose a new password, open this link within {minutes} minutes:\n\n{link}\n\n"
            "The link works once. If you did not ask for this, ignore this e-mail: "
            "your password stays as it is.\n")
    try:
        email_service.send_email(user.email, f"Reset your {cfg['APP_NAME']} password", text)
    except ServiceUnavailable as exc:
        log.error("password reset e-mail for user %s not sent: %s", user.id, exc.message)


def reset_password(token: str, new_password: str) -> User:
    now = utcnow()
    row = db.session.scalar(select(PasswordResetToken).where(
        PasswordResetToken.token_hash == _token_hash(token)))
    invalid = ValidationError("This reset link is invalid, used or expired; request a new one",
                              code="reset_token_invalid", details={"token": "invalid or expired"})
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise invalid
    user = db.session.get(User, row.user_id)
    _check_password_policy(new_password, user.email)
    # Single use, also when two requests race with the same token.
    claimed = db.session.execute(
        update(PasswordResetToken)
        .where(PasswordResetToken.id == row.id, PasswordResetToken.used_at.is_(None))
        .values(used_at=now)
    ).rowcount
    if claimed != 1:
        raise invalid
    user.set_password(new_password)
    user.failed_login_attempts, user.locked_until = 0, None
    revoke_all_tokens(user)
    return user


# --- Google -----------------------------------------------------------------------------------

GOOGLE_ISSUERS = {"accounts.google.com", "https://accounts.google.com"}


def google_login(id_token: str, client_type: str) -> User:
    # google-auth (~35 ms to import) loads only for a Google sign-in.
    from google.auth import exceptions as google_exceptions
    from google.auth.transport import requests as google_requests
    from google.oauth2 import id_token as google_id_token

    cfg = current_app.config
    client_id = cfg["GOOGLE_ADMIN_CLIENT_ID"] if client_type == "admin" else cfg["GOOGLE_CLIENT_ID"]
    if not client_id:
        raise ServiceUnavailable("Google sign-in is not configured on this server "
                                 "(set GOOGLE_CLIENT_ID)", code="google_not_configured")
    kwargs = {"certs_url": cfg["GOOGLE_CERTS_URL"]} if cfg.get("GOOGLE_CERTS_URL") else {}
    try:
        claims = google_id_token.verify_token(id_token, google_requests.Request(),
                                              audience=client_id, **kwargs)
    except google_exceptions.TransportError as exc:
        log.error("Google certificates unreachable: %s", exc)
        raise ServiceUnavailable("Google sign-in is unavailable; try again shortly")
    except (ValueError, google_exceptions.GoogleAuthError) as exc:
        log.info("Google token refused: %s", exc)
        raise Unauthorized("The Google token is invalid or expired", code="google_token_invalid")
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise Unauthorized("The Google token is invalid or expired", code="google_token_invalid")
    if not claims.get("email") or not claims.get("email_verified"):
        raise Forbidden("Your Google e-mail address is not verified", code="google_email_unverified")
    sub, email = str(claims["sub"]), normalise_email(claims["email"])

    user = db.session.scalar(select(User).where(User.google_sub == sub))
    if user is None:
        user = db.session.scalar(select(User).where(User.email == email))
        if user is not None and user.google_sub and user.google_sub != sub:
            raise Conflict("This e-mail is linked to another Google account",
                           code="google_account_mismatch")
    if client_type == "admin":
        if user is None or user.role != "admin":
            raise Forbidden("Only existing administrators can sign in here", code="not_admin")
    if user is None:
        user = User(email=email, role="student", is_active=True,
                    first_name=(claims.get("given_name") or "")[:100],
                    last_name=(claims.get("family_name") or "")[:100])
        db.session.add(user)
    if not user.is_active:
        raise Forbidden("This account has been deactivated", code="account_inactive")
    user.google_sub = sub
    user.is_email_verified = True
    if not user.profile_picture and claims.get("picture"):
        user.profile_picture = str(claims["picture"])[:500]
    user.last_login_at = utcnow()
    db.session.flush()
    return user


# --- profile ----------------------------------------------------------------------------------

def update_profile(user: User, changes: dict) -> User:
    for field, value in changes.items():
        if field in PROFILE_FIELDS:
            setattr(user, field, value)
    return user


def set_profile_picture(user: User, upload) -> str | None:
    """Store a new picture; returns the stored path of the one it replaces, for the caller to
    delete once the change is committed."""
    user.profile_picture, replaced = file_service.store_public_image(
        upload, "profiles", user.profile_picture)
    return replaced
