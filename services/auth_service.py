"""Accounts: registration (with or without a phone code), login with a lockout per account and
source (`authenticate` says how), logins and their tokens (services/session_service.py),
password change and reset (the reset e-mail is a job), Google sign-in, and the profile. Routes
call these; so can tests.

Each function leaves committing to its caller unless it says otherwise: lockout counters and
security events are committed here because they must survive the failed request that
produced them.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, case, delete, func, null, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from models import BackgroundJob, LoginThrottle, PasswordResetToken, TrustedSource, User, db
from services import email_service, file_service, jobs, session_service, sms_service
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
from utils.pipeline import blocked_ips, hash_slots
from utils.validators import normalise_email, password_problems

log = logging.getLogger("lms.auth")

PROFILE_FIELDS = ("first_name", "last_name", "bio", "headline", "date_of_birth", "country",
                  "city", "website")
ANY_SOURCE = "*"  # login_throttles.source of an unknown e-mail's counter over every source


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


def revoke_all_tokens(user: User, reason: str = "admin") -> None:
    """Every token issued to `user` before now stops working (on every worker: the check reads
    the user row), and every login of the user is recorded as ended for `reason`."""
    user.tokens_valid_after = _now_ms()
    session_service.end_all(user.id, reason)


def issue_tokens(user: User, ip: str | None = None) -> dict:
    """Start a login: its access and refresh token, and the signed-in user (the caller
    commits)."""
    return {
        **session_service.start(user, ip),
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


def _digest(kind: str, value: str) -> str:
    """A keyed hash (SECRET_KEY) of an e-mail, address or device token: what the lockout and
    trust tables store instead of the value."""
    key = str(current_app.config.get("SECRET_KEY") or "").encode()
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def _account_hash(email: str) -> str:
    return _digest("account", email.strip().lower())


def _locked_error(until: datetime) -> Locked:
    seconds = max(1, int((until - utcnow()).total_seconds()))
    return Locked(
        f"Too many failed logins: signing in to this account from here is locked for "
        f"{max(1, seconds // 60)} more minute(s)", headers={"Retry-After": str(seconds)},
        details={"locked_until": until.isoformat(timespec="seconds")})


def _invalid_credentials() -> Unauthorized:
    return Unauthorized("Invalid e-mail or password", code="invalid_credentials")


def _count_failure(account: str, source: str, now: datetime) -> datetime | None:
    """Count a failure of `source` for `account` in one statement (an upsert: parallel
    failures all count, and a lock that has run out starts the count afresh); the lock's end
    when this one reached LOGIN_MAX_FAILURES."""
    cfg = current_app.config
    table = LoginThrottle.__table__
    insert = pg_insert if db.session.get_bind().dialect.name == "postgresql" else sqlite_insert
    expired = and_(table.c.locked_until.is_not(None), table.c.locked_until <= now)
    failures = db.session.scalar(
        insert(table).values(account_hash=account, source=source, failures=1, updated_at=now)
        .on_conflict_do_update(
            index_elements=[table.c.account_hash, table.c.source],
            set_={"failures": case((expired, 1), else_=table.c.failures + 1),
                  "locked_until": case((expired, null()), else_=table.c.locked_until),
                  "updated_at": now})
        .returning(table.c.failures))
    if failures < cfg["LOGIN_MAX_FAILURES"]:
        return None
    until = now + timedelta(seconds=cfg["LOGIN_LOCKOUT_SECONDS"])
    db.session.execute(update(LoginThrottle).where(
        LoginThrottle.account_hash == account, LoginThrottle.source == source)
        .values(locked_until=until, failures=0))
    return until


def _count_account_failure(user: User | None, account: str, now: datetime) -> datetime | None:
    """Count a failure from a source the account does not trust: on the user row for an
    account, on the "*" row for an e-mail without one (which behaves the same)."""
    if user is None:
        return _count_failure(account, ANY_SOURCE, now)
    cfg = current_app.config
    failures = db.session.scalar(
        update(User).where(User.id == user.id)
        .values(failed_login_attempts=User.failed_login_attempts + 1)
        .returning(User.failed_login_attempts))
    if failures < cfg["LOGIN_MAX_FAILURES"]:
        return None
    until = now + timedelta(seconds=cfg["LOGIN_LOCKOUT_SECONDS"])
    db.session.execute(update(User).where(User.id == user.id)
                       .values(locked_until=until, failed_login_attempts=0))
    log.warning("account %s locked for untrusted sources after %s failed logins", user.id,
                failures)
    return until


def _trust(user: User, kind: str, source_hash: str, now: datetime) -> None:
    seen = db.session.execute(
        update(TrustedSource)
        .where(TrustedSource.user_id == user.id, TrustedSource.source_hash == source_hash)
        .values(last_seen_at=now)).rowcount
    if seen:
        return
    try:
        with db.session.begin_nested():
            db.session.add(TrustedSource(user_id=user.id, kind=kind, source_hash=source_hash,
                                         created_at=now, last_seen_at=now))
    except IntegrityError:
        pass  # a parallel sign-in from the same source recorded it


def authenticate(email: str, password: str, ip: str,
                 device_token: str | None = None) -> tuple[User, str]:
    """The user for these credentials and the device token to keep, or Unauthorized / Locked.

    Lockout (LOGIN_MAX_FAILURES failures -> LOGIN_LOCKOUT_SECONDS), scoped per account and
    source: the source is the device whose token is presented if it signed in to this account
    before, else the address. A source is locked after its own failures; and the account is
    locked for every source it does not trust (no earlier sign-in from that device or address
    within LOGIN_TRUSTED_SOURCE_DAYS) after failures from such sources, while trusted sources
    still sign in. An e-mail without an account goes through the same steps, counters and
    answers (no source is trusted by it), so neither 401 nor 423 says whether an account
    exists; a deactivated account answers a right password as a wrong one. A completed
    password reset, or an admin, lifts every lock of the account. Failures are committed."""
    cfg = current_app.config
    email = email.strip().lower()
    now = utcnow()
    account = _account_hash(email)
    user = db.session.scalar(select(User).where(User.email == email))
    address = _digest("address", ip)
    device = _digest("device", device_token) if device_token else None
    trusted_kinds = dict(db.session.execute(
        select(TrustedSource.source_hash, TrustedSource.kind).where(
            TrustedSource.user_id == (user.id if user is not None else 0),
            TrustedSource.source_hash.in_([address] + ([device] if device else [])),
            TrustedSource.last_seen_at > now - timedelta(
                days=cfg["LOGIN_TRUSTED_SOURCE_DAYS"]))).all())
    known_device = device is not None and device in trusted_kinds
    trusted = bool(trusted_kinds)
    source = device if known_device else address
    throttles = {row.source: row for row in db.session.scalars(select(LoginThrottle).where(
        LoginThrottle.account_hash == account,
        LoginThrottle.source.in_((source, ANY_SOURCE))))}
    locks = [row.locked_until for row in throttles.values()
             if row.locked_until is not None and row.locked_until > now
             and (row.source == source or not trusted)]
    if user is not None and user.locked_until is not None:
        if user.locked_until <= now:  # the account's lock has run out: count afresh
            user.locked_until, user.failed_login_attempts = None, 0
            db.session.commit()
        elif not trusted:
            locks.append(user.locked_until)
    if locks:
        raise _locked_error(max(locks))

    if user is not None and user.password_hash:
        stored = user.password_hash
        right = user.check_password(password)
        if right and not user.is_active:  # a refused sign-in moves nothing, the hash included
            user.password_hash = stored
    else:
        _equalise_timing(password)
        right = False
    if not (right and user.is_active):
        until = _count_failure(account, source, now)
        if not trusted:
            until = max(filter(None, (until, _count_account_failure(user, account, now))),
                        default=None)
        db.session.commit()
        blocked_ips.record_login_failure(ip, email)
        if until is not None:
            raise _locked_error(until)
        raise _invalid_credentials()

    db.session.execute(delete(LoginThrottle).where(LoginThrottle.account_hash == account,
                                                   LoginThrottle.source == source))
    if user.locked_until is None:
        user.failed_login_attempts = 0
    user.last_login_at = now
    _trust(user, "address", address, now)
    if not known_device:
        device_token = secrets.token_urlsafe(32)
        device = _digest("device", device_token)
    _trust(user, "device", device, now)
    return user, device_token


def unlock(user: User) -> int:
    """Lift every lock and failure count of the account, from every source (a completed
    password reset, an admin). Returns how many locks were in force (the caller commits)."""
    now = utcnow()
    account = _account_hash(user.email)
    locked = db.session.scalar(select(func.count(LoginThrottle.id)).where(
        LoginThrottle.account_hash == account, LoginThrottle.locked_until > now)) or 0
    if user.locked_until is not None and user.locked_until > now:
        locked += 1
    db.session.execute(delete(LoginThrottle).where(LoginThrottle.account_hash == account))
    user.failed_login_attempts, user.locked_until = 0, None
    return locked


def prune_sign_in_records() -> int:
    """Delete what no longer decides anything: failure counters idle for a lockout period with
    no lock in force, sources unseen for LOGIN_TRUSTED_SOURCE_DAYS, and finished logins (the
    worker's periodic tick; the caller commits)."""
    cfg, now = current_app.config, utcnow()
    idle = now - timedelta(seconds=cfg["LOGIN_LOCKOUT_SECONDS"])
    pruned = db.session.execute(delete(LoginThrottle).where(
        LoginThrottle.updated_at < idle,
        (LoginThrottle.locked_until.is_(None)) | (LoginThrottle.locked_until < now))).rowcount
    pruned += db.session.execute(delete(TrustedSource).where(
        TrustedSource.last_seen_at < now - timedelta(days=cfg["LOGIN_TRUSTED_SOURCE_DAYS"]))
    ).rowcount
    return pruned + session_service.prune()


def refresh_tokens(payload: dict, user: User, ip: str | None = None) -> dict:
    """A new access and refresh token for a refresh token (rotation; see session_service)."""
    return {**session_service.rotate(payload, user, ip), "token_type": "Bearer",
            "expires_in": current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]}


def logout(current_payload: dict, refresh_token: str | None) -> None:
    """End the login of the presented token (access or refresh: both tokens die), and the
    login of the refresh token sent in the body when it is the same user's."""
    session_service.end_presented(current_payload)
    other = session_service.decode_refresh(refresh_token, current_payload.get("sub"))
    if other is not None:
        session_service.end_presented(other)


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
    revoke_all_tokens(user, "password")
    return issue_tokens(user)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def request_password_reset(email: str) -> BackgroundJob:
    """Queue the reset e-mail as a background job ("auth.password_reset"), for every e-mail
    alike: the request does the same work and takes the same time whether or not an account
    exists (the lookup, the token and the delivery happen in the job; the caller commits).
    With JOBS_BACKEND=inline the job runs once the request commits, as every job does there."""
    return jobs.start("auth.password_reset", {"email": email[:254]})


def send_password_reset(args: dict) -> dict:
    """The job: e-mail a single-use reset link if an active account has this e-mail. A
    delivery failure raises, so the worker retries (each attempt voids the earlier link)."""
    cfg = current_app.config
    try:
        email = normalise_email(args["email"])
    except ValueError:
        return {"sent": 0}
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None or not user.is_active:
        return {"sent": 0}
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
    email_service.send_email(user.email, f"Reset your {cfg['APP_NAME']} password", text)
    return {"sent": 1}


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
    unlock(user)
    revoke_all_tokens(user, "password")
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
