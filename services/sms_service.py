"""Phone verification by one-time code, behind one interface (SmsProvider) and a registry
(PROVIDERS), chosen by SMS_BACKEND:

- TwilioVerifyProvider ("twilio"): Twilio Verify v2 through the `twilio` SDK (TWILIO_* set); Twilio sends,
  stores and checks the code. TWILIO_API_BASE points the client elsewhere (tests).
- ConsoleProvider ("console"): the code is generated here, written to the log, and stored as an HMAC with an
  expiry and an attempt limit (development and tests).

Either way a PhoneVerification row records each send (for the per-phone send limit) and the
moment the phone was verified, which opens the window in which /auth/register accepts it.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from abc import ABC, abstractmethod
from datetime import timedelta

import requests
from flask import current_app
from sqlalchemy import func, select, update
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from models import PhoneVerification, db
from utils.errors import ServiceUnavailable, TooManyRequests, ValidationError
from utils.helpers import utcnow
from utils.providers import configured

log = logging.getLogger("lms.sms")


class OTPInvalid(ValidationError):
    code = "otp_invalid"
    message = "The code is wrong or has expired"


def _code_hash(phone: str, code: str) -> str:
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, f"{phone}:{code}".encode(), hashlib.sha256).hexdigest()


def _latest_open(phone: str, provider: str, *conditions) -> PhoneVerification | None:
    """The newest verification of `phone` by `provider` neither verified nor used."""
    return db.session.scalar(
        select(PhoneVerification)
        .where(PhoneVerification.phone_number == phone,
               PhoneVerification.provider == provider,
               PhoneVerification.verified_at.is_(None),
               PhoneVerification.consumed_at.is_(None), *conditions)
        .order_by(PhoneVerification.created_at.desc(), PhoneVerification.id.desc())
        .limit(1)
    )


def _invalid(message: str = "The code is wrong or has expired; request a new one") -> OTPInvalid:
    return OTPInvalid(message, details={"code": message})


class SmsProvider(ABC):
    """One way of verifying a phone: send it a code, then check the code it was sent."""

    name: str

    @abstractmethod
    def send_code(self, phone: str) -> None: ...

    @abstractmethod
    def check_code(self, phone: str, code: str) -> bool:
        """True when `code` is right (the phone is then verified); OTPInvalid otherwise."""


class ConsoleProvider(SmsProvider):
    name = "console"

    def send_code(self, phone: str) -> None:
        length = current_app.config["OTP_LENGTH"]
        code = f"{secrets.randbelow(10 ** length):0{length}d}"
        now = utcnow()
        # A new code voids the earlier ones still pending for this phone.
        db.session.execute(
            update(PhoneVerification)
            .where(PhoneVerification.phone_number == phone,
                   PhoneVerification.verified_at.is_(None),
                   PhoneVerification.consumed_at.is_(None))
            .values(consumed_at=now)
        )
        db.session.add(PhoneVerification(
            phone_number=phone, code_hash=_code_hash(phone, code), provider=self.name,
            expires_at=now + timedelta(seconds=current_app.config["OTP_EXPIRY_SECONDS"]),
        ))
        log.warning("OTP for %s is %s (console SMS provider: no SMS was sent)", phone, code)

    def check_code(self, phone: str, code: str) -> bool:
        now = utcnow()
        pending = _latest_open(phone, self.name, PhoneVerification.expires_at > now)
        if pending is None:
            raise _invalid()
        # Count the attempt in the database, atomically, before comparing: parallel guesses on
        # several workers all count.
        attempts = db.session.scalar(
            update(PhoneVerification)
            .where(PhoneVerification.id == pending.id)
            .values(attempts=PhoneVerification.attempts + 1)
            .returning(PhoneVerification.attempts)
        )
        if attempts > current_app.config["OTP_MAX_ATTEMPTS"]:
            pending.consumed_at = now
            db.session.commit()
            raise _invalid("Too many wrong codes; request a new one")
        if not hmac.compare_digest(pending.code_hash or "", _code_hash(phone, code)):
            db.session.commit()  # keep the attempt even though the request fails
            raise _invalid()
        pending.verified_at = now
        return True


class TwilioVerifyProvider(SmsProvider):
    name = "twilio"

    def _service(self):
        cfg = current_app.config
        client = Client(cfg["TWILIO_ACCOUNT_SID"], cfg["TWILIO_AUTH_TOKEN"])
        if cfg.get("TWILIO_API_BASE"):
            client.verify.base_url = cfg["TWILIO_API_BASE"].rstrip("/")
        return client.verify.v2.services(cfg["TWILIO_VERIFY_SERVICE_SID"])

    def send_code(self, phone: str) -> None:
        try:
            self._service().verifications.create(to=phone, channel="sms")
        except TwilioRestException as exc:
            if exc.status == 429:
                raise TooManyRequests("Too many codes requested for this phone; try later")
            if exc.status == 400:
                raise ValidationError("This phone number cannot receive SMS",
                                      details={"phone_number": "cannot receive SMS"})
            log.error("Twilio Verify refused a send: %s %s", exc.status, exc.code)
            raise ServiceUnavailable("The SMS service is unavailable; try again shortly")
        except requests.RequestException as exc:
            log.error("Twilio Verify unreachable: %s", exc)
            raise ServiceUnavailable("The SMS service is unavailable; try again shortly")
        now = utcnow()
        db.session.add(PhoneVerification(
            phone_number=phone, provider=self.name,
            expires_at=now + timedelta(seconds=current_app.config["OTP_EXPIRY_SECONDS"]),
        ))

    def check_code(self, phone: str, code: str) -> bool:
        try:
            result = self._service().verification_checks.create(to=phone, code=code)
        except TwilioRestException as exc:
            if exc.status in (404, 429):  # expired, already approved, or too many attempts
                raise _invalid()
            log.error("Twilio Verify refused a check: %s %s", exc.status, exc.code)
            raise ServiceUnavailable("The SMS service is unavailable; try again shortly")
        except requests.RequestException as exc:
            log.error("Twilio Verify unreachable: %s", exc)
            raise ServiceUnavailable("The SMS service is unavailable; try again shortly")
        if result.status != "approved":
            raise _invalid()
        now = utcnow()
        row = _latest_open(phone, self.name)
        if row is None:
            row = PhoneVerification(phone_number=phone, provider=self.name, expires_at=now)
            db.session.add(row)
        row.verified_at = now
        return True


PROVIDERS: dict[str, type[SmsProvider]] = {
    provider.name: provider for provider in (ConsoleProvider, TwilioVerifyProvider)}


def provider() -> SmsProvider:
    """The provider SMS_BACKEND names; 503 sms_not_configured when there is none."""
    chosen = configured(PROVIDERS, "SMS_BACKEND")
    if chosen is None:
        raise ServiceUnavailable("SMS verification is not configured on this server "
                                 "(set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and "
                                 "TWILIO_VERIFY_SERVICE_SID)", code="sms_not_configured")
    return chosen()


def send_otp(phone: str) -> None:
    """Send a code to `phone` (already E.164), within the per-phone hourly limit."""
    since = utcnow() - timedelta(hours=1)
    sent = db.session.scalar(
        select(func.count()).select_from(PhoneVerification)
        .where(PhoneVerification.phone_number == phone, PhoneVerification.created_at >= since)
    )
    if sent >= current_app.config["OTP_MAX_SENDS_PER_HOUR"]:
        raise TooManyRequests("Too many codes were sent to this phone in the last hour",
                              headers={"Retry-After": "3600"})
    provider().send_code(phone)


def check_otp(phone: str, code: str) -> None:
    """Raise OTPInvalid unless `code` is the current code for `phone`; on success the phone is
    verified (the caller commits)."""
    provider().check_code(phone, code)


def take_verified_phone(phone: str) -> PhoneVerification | None:
    """The verification that lets `phone` register (verified within the window, not yet used),
    marked used; None if there is none."""
    window = timedelta(seconds=current_app.config["PHONE_VERIFIED_WINDOW_SECONDS"])
    now = utcnow()
    row = db.session.scalar(
        select(PhoneVerification)
        .where(PhoneVerification.phone_number == phone,
               PhoneVerification.verified_at >= now - window,
               PhoneVerification.consumed_at.is_(None))
        .order_by(PhoneVerification.verified_at.desc())
        .limit(1)
    )
    if row is None:
        return None
    # Only one registration may use a verification, even if two race for it.
    taken = db.session.execute(
        update(PhoneVerification)
        .where(PhoneVerification.id == row.id, PhoneVerification.consumed_at.is_(None))
        .values(consumed_at=now)
    ).rowcount
    return row if taken == 1 else None
