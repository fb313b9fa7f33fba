"""Accounts through the HTTP API: registration (direct and by phone code), login and lockout,
refresh and logout, password change, the profile and its picture."""
from __future__ import annotations

import io
import logging
import re
from datetime import timedelta

import pytest
from flask_jwt_extended import decode_token
from sqlalchemy import select

from models import PhoneVerification, RevokedToken, SecurityEvent, User, db
from tests.support.assertions import count
from utils.helpers import utcnow

PASSWORD = "Passw0rd!"
PHONE = "+14155550123"


def register_body(**overrides):
    body = {"email": "new.user@example.com", "password": "Sup3rsecret", "first_name": "Ada",
            "last_name": "O'Brien"}
    body.update(overrides)
    return body


def user_row(app, **where):
    with app.app_context():
        user = db.session.scalar(select(User).filter_by(**where))
        if user is not None:
            db.session.expunge(user)
        return user


def login(client, email, password=PASSWORD, **kwargs):
    return client.post("/api/v1/auth/login", json={"email": email, "password": password},
                       **kwargs)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def sms_codes():
    """Codes the console SMS provider writes to the log, by phone number."""
    codes: dict[str, str] = {}

    class Collect(logging.Handler):
        def emit(self, record):
            match = re.search(r"OTP for (\+\d+) is (\d+)", record.getMessage())
            if match:
                codes[match.group(1)] = match.group(2)

    handler = Collect()
    logging.getLogger("lms.sms").addHandler(handler)
    yield codes
    logging.getLogger("lms.sms").removeHandler(handler)


@pytest.fixture
def otp_required(app):
    app.config["OTP_REQUIRED"] = True
    yield
    app.config["OTP_REQUIRED"] = False


# --- direct registration ----------------------------------------------------------------------

def test_register_creates_a_student(client, app):
    response = client.post("/api/v1/auth/register", json=register_body(email="New.User@Example.COM"))
    assert response.status_code == 201
    body = response.json
    assert body["user"]["email"] == "new.user@example.com"
    assert body["user"]["role"] == "student" and body["user"]["last_name"] == "O'Brien"
    assert "password_hash" not in str(body)
    user = user_row(app, email="new.user@example.com")
    assert user.role == "student" and user.is_active and not user.is_phone_verified
    assert user.password_hash.startswith("$argon2id$")


def test_register_as_instructor(client, app):
    response = client.post("/api/v1/auth/register", json=register_body(role="instructor"))
    assert response.status_code == 201
    assert user_row(app, email="new.user@example.com").role == "instructor"


def test_register_refuses_admin_role(client, app):
    response = client.post("/api/v1/auth/register", json=register_body(role="admin"))
    assert response.status_code == 422 and "role" in response.json["details"]
    assert count(app, User) == 0


def test_duplicate_email_is_409_whatever_the_case(client, app, make_user):
    make_user(email="taken@example.com")
    response = client.post("/api/v1/auth/register", json=register_body(email="TAKEN@example.com"))
    assert response.status_code == 409 and response.json["code"] == "email_taken"
    assert count(app, User) == 1


def test_duplicate_phone_is_409(client, app, make_user):
    make_user(phone_number=PHONE)
    response = client.post("/api/v1/auth/register",
                           json=register_body(phone_number="+1 (415) 555-0123"))
    assert response.status_code == 409 and response.json["code"] == "phone_taken"


@pytest.mark.parametrize("password, fragment", [
    ("short1", "at least 8"),
    ("allletters", "digit"),
    ("1234567890", "letter"),
    ("new.user@example.com1", None),  # acceptable: not the e-mail itself
])
def test_password_policy(client, app, password, fragment):
    response = client.post("/api/v1/auth/register", json=register_body(password=password))
    if fragment is None:
        assert response.status_code == 201
    else:
        assert response.status_code == 422
        assert fragment in response.json["details"]["password"]
        assert count(app, User) == 0


def test_password_equal_to_email_is_refused(client):
    response = client.post("/api/v1/auth/register",
                           json=register_body(email="abc12345@example.com",
                                              password="abc12345@example.com"))
    assert response.status_code == 422
    assert "e-mail" in response.json["details"]["password"]


@pytest.mark.parametrize("field, value", [
    ("email", "not-an-email"), ("email", "a" * 300 + "@example.com"),
    ("phone_number", "4155550123"), ("phone_number", "+1 555"),
    ("first_name", ""), ("first_name", "x" * 101), ("first_name", "12345"),
    ("first_name", "<script>alert(1)</script>"), ("last_name", "' OR '1'='1"),
    ("password", "x" * 129), ("email", 12345),
])
def test_bad_registration_input_is_422(client, app, field, value):
    response = client.post("/api/v1/auth/register", json=register_body(**{field: value}))
    assert response.status_code == 422
    assert field in response.json["details"]
    assert count(app, User) == 0


@pytest.mark.parametrize("missing", ["email", "password", "first_name", "last_name"])
def test_missing_registration_field_is_422(client, missing):
    body = register_body()
    del body[missing]
    response = client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 422 and missing in response.json["details"]


def test_injection_attempt_is_recorded_as_security_event(client, app):
    client.post("/api/v1/auth/register", json=register_body(first_name="<script>x</script>"),
                environ_base={"REMOTE_ADDR": "203.0.113.7"})
    with app.app_context():
        event = db.session.scalar(select(SecurityEvent))
        assert (event.kind, event.ip_address, event.subject) == (
            "unsafe_input", "203.0.113.7", "text:first_name")  # free text: counted, not blocking


def test_register_requires_verified_phone_when_otp_required(client, app, otp_required):
    response = client.post("/api/v1/auth/register", json=register_body())
    assert response.status_code == 422 and response.json["code"] == "phone_not_verified"
    response = client.post("/api/v1/auth/register", json=register_body(phone_number=PHONE))
    assert response.status_code == 422 and response.json["code"] == "phone_not_verified"
    assert count(app, User) == 0


# --- registration by phone code (console provider) -------------------------------------------

def test_send_otp_stores_only_a_hash(client, app, sms_codes):
    response = client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    assert response.status_code == 200
    code = sms_codes[PHONE]
    with app.app_context():
        row = db.session.scalar(select(PhoneVerification))
        assert row.phone_number == PHONE and row.code_hash and code not in row.code_hash
        assert row.expires_at > utcnow() + timedelta(minutes=9)


def test_send_token_alias(client, sms_codes):
    assert client.post("/api/v1/auth/send-token", json={"phone_number": PHONE}).status_code == 200
    assert PHONE in sms_codes


def test_send_otp_to_registered_phone_is_409(client, make_user, sms_codes):
    make_user(phone_number=PHONE)
    response = client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    assert response.status_code == 409 and PHONE not in sms_codes


def test_one_step_registration_with_code(client, app, sms_codes):
    client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    response = client.post("/api/v1/auth/register/verify-otp",
                           json=register_body(phone_number=PHONE, code=sms_codes[PHONE]))
    assert response.status_code == 201
    assert response.json["access_token"] and response.json["refresh_token"]
    assert response.json["user"]["is_phone_verified"] is True
    user = user_row(app, phone_number=PHONE)
    assert user.is_phone_verified and user.email == "new.user@example.com"
    with app.app_context():
        assert db.session.scalar(select(PhoneVerification.consumed_at)) is not None


def test_wrong_code_is_422_and_creates_nothing(client, app, sms_codes):
    client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    wrong = "000000" if sms_codes[PHONE] != "000000" else "111111"
    response = client.post("/api/v1/auth/register/verify-otp",
                           json=register_body(phone_number=PHONE, code=wrong))
    assert response.status_code == 422 and response.json["code"] == "otp_invalid"
    assert count(app, User) == 0
    with app.app_context():
        assert db.session.scalar(select(PhoneVerification.attempts)) == 1


def test_code_is_void_after_too_many_attempts(client, app, sms_codes):
    client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    code = sms_codes[PHONE]
    wrong = "000000" if code != "000000" else "111111"
    # From several addresses, as a distributed guesser would: the per-IP rate limit does not
    # apply, the per-code attempt limit must.
    for i in range(app.config["OTP_MAX_ATTEMPTS"]):
        client.post("/api/v1/auth/verify-otp", json={"phone_number": PHONE, "code": wrong},
                    environ_base={"REMOTE_ADDR": f"192.0.2.{i + 1}"})
    response = client.post("/api/v1/auth/verify-otp", json={"phone_number": PHONE, "code": code},
                           environ_base={"REMOTE_ADDR": "192.0.2.100"})
    assert response.status_code == 422 and response.json["code"] == "otp_invalid"
    with app.app_context():
        assert db.session.scalar(select(PhoneVerification.verified_at)) is None


def test_expired_code_is_refused(client, app, sms_codes):
    client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    with app.app_context():
        row = db.session.scalar(select(PhoneVerification))
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    response = client.post("/api/v1/auth/verify-otp",
                           json={"phone_number": PHONE, "code": sms_codes[PHONE]})
    assert response.status_code == 422 and response.json["code"] == "otp_invalid"


def test_a_new_code_voids_the_previous_one(client, app, sms_codes):
    client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    first = sms_codes[PHONE]
    client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    second = sms_codes[PHONE]
    if first != second:
        response = client.post("/api/v1/auth/verify-otp",
                               json={"phone_number": PHONE, "code": first})
        assert response.status_code == 422
    response = client.post("/api/v1/auth/verify-otp", json={"phone_number": PHONE, "code": second})
    assert response.status_code == 200


def test_sends_per_phone_are_limited(client, app, sms_codes):
    app.config["RATELIMIT_ENABLED"] = True
    limit = app.config["OTP_MAX_SENDS_PER_HOUR"]
    with app.app_context():
        for _ in range(limit):
            db.session.add(PhoneVerification(phone_number=PHONE, code_hash="x",
                                             expires_at=utcnow() + timedelta(minutes=5)))
        db.session.commit()
    response = client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    assert response.status_code == 429 and response.headers["Retry-After"]


def test_two_step_registration(client, app, sms_codes, otp_required):
    client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    response = client.post("/api/v1/auth/verify-otp",
                           json={"phone_number": PHONE, "code": sms_codes[PHONE]})
    assert response.status_code == 200
    response = client.post("/api/v1/auth/register", json=register_body(phone_number=PHONE))
    assert response.status_code == 201 and response.json["user"]["is_phone_verified"] is True
    # The verification is spent: a second account cannot reuse it.
    again = client.post("/api/v1/auth/register",
                        json=register_body(email="other@example.com", phone_number=PHONE))
    assert again.status_code == 409


def test_verification_window_expires(client, app, sms_codes, otp_required):
    client.post("/api/v1/auth/register/send-otp", json={"phone_number": PHONE})
    client.post("/api/v1/auth/verify-otp", json={"phone_number": PHONE, "code": sms_codes[PHONE]})
    with app.app_context():
        row = db.session.scalar(select(PhoneVerification))
        row.verified_at = utcnow() - timedelta(seconds=app.config["PHONE_VERIFIED_WINDOW_SECONDS"] + 1)
        db.session.commit()
    response = client.post("/api/v1/auth/register", json=register_body(phone_number=PHONE))
    assert response.status_code == 422 and response.json["code"] == "phone_not_verified"


def test_otp_routes_validate_input(client):
    assert client.post("/api/v1/auth/verify-otp",
                       json={"phone_number": PHONE, "code": "12ab"}).status_code == 422
    assert client.post("/api/v1/auth/register/send-otp",
                       json={"phone_number": "12"}).status_code == 422


# --- login, lockout ---------------------------------------------------------------------------

def test_login_returns_tokens_with_role_claim(client, app, make_user):
    user_id = make_user("instructor", email="teach@example.com")
    response = login(client, "Teach@Example.com")
    assert response.status_code == 200
    body = response.json
    assert body["user"]["id"] == user_id and body["token_type"] == "Bearer"
    with app.app_context():
        claims = decode_token(body["access_token"])
        assert claims["sub"] == str(user_id) and claims["role"] == "instructor"
        assert claims["type"] == "access"
        assert decode_token(body["refresh_token"])["type"] == "refresh"
        assert claims["exp"] - claims["iat"] == app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    assert user_row(app, id=user_id).last_login_at is not None


def test_unknown_email_and_wrong_password_answer_alike(client, make_user):
    make_user(email="known@example.com")
    unknown = login(client, "nobody@example.com")
    wrong = login(client, "known@example.com", "Wr0ngpassword")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json == wrong.json == {"error": "Invalid e-mail or password",
                                         "code": "invalid_credentials"}


def test_five_failures_lock_the_account(client, app, make_user):
    user_id = make_user(email="victim@example.com")
    for _ in range(4):
        assert login(client, "victim@example.com", "Wr0ngpassword").status_code == 401
    fifth = login(client, "victim@example.com", "Wr0ngpassword")
    assert fifth.status_code == 423 and fifth.json["code"] == "account_locked"
    retry = int(fifth.headers["Retry-After"])
    assert 1790 <= retry <= 1800
    right = login(client, "victim@example.com")
    assert right.status_code == 423 and int(right.headers["Retry-After"]) > 0
    user = user_row(app, id=user_id)
    assert user.locked_until > utcnow() + timedelta(minutes=29)


def test_success_resets_the_failure_count(client, app, make_user):
    user_id = make_user(email="forgetful@example.com")
    for _ in range(4):
        login(client, "forgetful@example.com", "Wr0ngpassword")
    assert login(client, "forgetful@example.com").status_code == 200
    assert user_row(app, id=user_id).failed_login_attempts == 0
    for _ in range(4):
        assert login(client, "forgetful@example.com", "Wr0ngpassword").status_code == 401


def test_lock_runs_out(client, app, make_user):
    user_id = make_user(email="later@example.com")
    with app.app_context():
        user = db.session.get(User, user_id)
        user.locked_until = utcnow() - timedelta(seconds=1)
        user.failed_login_attempts = 4
        db.session.commit()
    assert login(client, "later@example.com", "Wr0ngpassword").status_code == 401
    assert user_row(app, id=user_id).failed_login_attempts == 1
    assert login(client, "later@example.com").status_code == 200


def test_deactivated_user_cannot_log_in(client, make_user):
    # The right password answers as a wrong one: the answer is no password oracle.
    make_user(email="gone@example.com", is_active=False)
    right = login(client, "gone@example.com")
    wrong = login(client, "gone@example.com", "Wr0ngpassword")
    unknown = login(client, "never@example.com")
    assert right.status_code == wrong.status_code == unknown.status_code == 401
    assert right.json == wrong.json == unknown.json == {
        "error": "Invalid e-mail or password", "code": "invalid_credentials"}


def test_google_only_account_cannot_log_in_with_a_password(client, app):
    with app.app_context():
        db.session.add(User(email="g@example.com", first_name="G", last_name="User",
                            google_sub="123"))
        db.session.commit()
    assert login(client, "g@example.com").status_code == 401


def test_login_rate_limit(client, app, make_user):
    make_user(email="busy@example.com")
    limit = int(app.config["RATE_LIMIT_LOGIN"].split()[0])
    statuses = [login(client, "busy@example.com", environ_base={"REMOTE_ADDR": "198.51.100.9"}
                      ).status_code for _ in range(limit + 1)]
    assert statuses == [200] * limit + [429]
    # Another address is not affected.
    assert login(client, "busy@example.com").status_code == 200


# --- refresh, logout --------------------------------------------------------------------------

def tokens_for(client, make_user, **fields):
    user_id = make_user(**fields)
    email = user_row(client.application, id=user_id).email
    body = login(client, email).json
    return user_id, body["access_token"], body["refresh_token"]


def test_refresh_gives_a_new_access_token(client, app, make_user):
    user_id, access, refresh = tokens_for(client, make_user)
    response = client.post("/api/v1/auth/refresh", headers=bearer(refresh))
    assert response.status_code == 200
    new_access = response.json["access_token"]
    assert client.get("/api/v1/auth/profile", headers=bearer(new_access)).json["user"]["id"] == user_id


def test_refresh_refuses_an_access_token(client, make_user):
    _, access, _ = tokens_for(client, make_user)
    response = client.post("/api/v1/auth/refresh", headers=bearer(access))
    assert response.status_code == 401


def test_refresh_refuses_a_deactivated_user(client, app, make_user):
    user_id, _, refresh = tokens_for(client, make_user)
    with app.app_context():
        db.session.get(User, user_id).is_active = False
        db.session.commit()
    assert client.post("/api/v1/auth/refresh", headers=bearer(refresh)).status_code == 401


def test_logout_revokes_access_and_refresh_tokens(client, app, make_user):
    _, access, refresh = tokens_for(client, make_user)
    response = client.post("/api/v1/auth/logout", headers=bearer(access),
                           json={"refresh_token": refresh})
    assert response.status_code == 200
    assert client.get("/api/v1/auth/profile", headers=bearer(access)).json["code"] == "token_revoked"
    assert client.post("/api/v1/auth/refresh", headers=bearer(refresh)).status_code == 401
    assert count(app, RevokedToken) == 2
    # Logging out again with the revoked token is refused, not an error.
    assert client.post("/api/v1/auth/logout", headers=bearer(access)).status_code == 401


def test_logout_with_a_refresh_token(client, make_user):
    # The refresh token alone ends the login: its access token dies with it.
    _, access, refresh = tokens_for(client, make_user)
    assert client.post("/api/v1/auth/logout", headers=bearer(refresh)).status_code == 200
    assert client.post("/api/v1/auth/refresh", headers=bearer(refresh)).status_code == 401
    assert client.get("/api/v1/auth/profile", headers=bearer(access)).json["code"] == "token_revoked"


def test_logout_does_not_revoke_another_users_refresh_token(client, make_user):
    _, access, _ = tokens_for(client, make_user)
    _, _, other_refresh = tokens_for(client, make_user)
    client.post("/api/v1/auth/logout", headers=bearer(access),
                json={"refresh_token": other_refresh})
    assert client.post("/api/v1/auth/refresh", headers=bearer(other_refresh)).status_code == 200


def test_revocation_is_in_redis_when_configured(client, app, make_user):
    from utils.pipeline import redis_client

    with app.app_context():
        redis = redis_client.get()
    if redis is None:
        from tests.conftest import require_service

        require_service("TEST_REDIS_URL (Redis)", None)
    _, access, _ = tokens_for(client, make_user)
    client.post("/api/v1/auth/logout", headers=bearer(access))
    with app.app_context():
        jti = decode_token(access, allow_expired=True)["jti"]
    key = f"lms:revoked-jti:{jti}"
    assert redis.exists(key) and 0 < redis.ttl(key) <= app.config["JWT_ACCESS_TOKEN_EXPIRES"] + 1


# --- password change --------------------------------------------------------------------------

def test_change_password(client, app, make_user):
    user_id, access, refresh = tokens_for(client, make_user, email="change@example.com")
    response = client.post("/api/v1/auth/change-password", headers=bearer(access),
                           json={"current_password": PASSWORD, "new_password": "N3wpassword"})
    assert response.status_code == 200
    fresh = response.json["access_token"]
    assert client.get("/api/v1/auth/profile", headers=bearer(access)).status_code == 401
    assert client.post("/api/v1/auth/refresh", headers=bearer(refresh)).status_code == 401
    assert client.get("/api/v1/auth/profile", headers=bearer(fresh)).status_code == 200
    assert login(client, "change@example.com", "N3wpassword").status_code == 200
    assert login(client, "change@example.com").status_code == 401


@pytest.mark.parametrize("body, field", [
    ({"current_password": "Wr0ngpass", "new_password": "N3wpassword"}, "current_password"),
    ({"current_password": PASSWORD, "new_password": "weak"}, "new_password"),
    ({"current_password": PASSWORD, "new_password": PASSWORD}, "new_password"),
    ({"current_password": PASSWORD}, "new_password"),
])
def test_change_password_failures(client, app, make_user, body, field):
    user_id, access, _ = tokens_for(client, make_user)
    before = user_row(app, id=user_id).password_hash
    response = client.post("/api/v1/auth/change-password", headers=bearer(access), json=body)
    assert response.status_code == 422 and field in response.json["details"]
    assert user_row(app, id=user_id).password_hash == before
    assert client.get("/api/v1/auth/profile", headers=bearer(access)).status_code == 200


# --- password reset (console mail backend) ----------------------------------------------------


def reset_token_from(messages):
    match = re.search(r"/reset-password/([A-Za-z0-9_\-]+)", messages[-1])
    return match.group(1)


def test_reset_request_answers_alike_for_unknown_email(client, make_user, mailbox):
    make_user(email="known@example.com")
    known = client.post("/api/v1/auth/password-reset/request", json={"email": "known@example.com"})
    unknown = client.post("/api/v1/auth/forgot-password", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert known.json == unknown.json
    assert len(mailbox) == 1 and "known@example.com" in mailbox[0]


def test_reset_token_is_hashed_single_use_and_expires(client, app, make_user, mailbox):
    from models import PasswordResetToken

    user_id, access, _ = tokens_for(client, make_user, email="reset@example.com")
    client.post("/api/v1/auth/password-reset/request", json={"email": "reset@example.com"})
    token = reset_token_from(mailbox)
    with app.app_context():
        stored = db.session.scalar(select(PasswordResetToken.token_hash))
        assert stored != token and len(stored) == 64
    response = client.post("/api/v1/auth/password-reset/verify",
                           json={"token": token, "new_password": "Fr3shpassword"})
    assert response.status_code == 200
    assert client.get("/api/v1/auth/profile", headers=bearer(access)).status_code == 401
    assert login(client, "reset@example.com", "Fr3shpassword").status_code == 200
    again = client.post("/api/v1/auth/password-reset/verify",
                        json={"token": token, "new_password": "0therpassword"})
    assert again.status_code == 422 and again.json["code"] == "reset_token_invalid"

    client.post("/api/v1/auth/forgot-password", json={"email": "reset@example.com"})
    expired = reset_token_from(mailbox)
    with app.app_context():
        for row in db.session.scalars(select(PasswordResetToken)):
            row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    response = client.post(f"/api/v1/auth/reset-password/{expired}",
                           json={"password": "0therpassword"})
    assert response.status_code == 422 and response.json["code"] == "reset_token_invalid"


def test_reset_unlocks_the_account_and_checks_policy(client, app, make_user, mailbox):
    user_id = make_user(email="locked@example.com")
    with app.app_context():
        db.session.get(User, user_id).locked_until = utcnow() + timedelta(minutes=20)
        db.session.commit()
    client.post("/api/v1/auth/forgot-password", json={"email": "locked@example.com"})
    token = reset_token_from(mailbox)
    weak = client.post(f"/api/v1/auth/reset-password/{token}", json={"password": "weak"})
    assert weak.status_code == 422 and "password" in weak.json["details"]
    ok = client.post(f"/api/v1/auth/reset-password/{token}", json={"password": "Unl0cked!!"})
    assert ok.status_code == 200
    assert login(client, "locked@example.com", "Unl0cked!!").status_code == 200


def test_a_newer_reset_link_voids_the_older(client, make_user, mailbox):
    make_user(email="twice@example.com")
    client.post("/api/v1/auth/forgot-password", json={"email": "twice@example.com"})
    first = reset_token_from(mailbox)
    client.post("/api/v1/auth/forgot-password", json={"email": "twice@example.com"})
    response = client.post("/api/v1/auth/password-reset/verify",
                           json={"token": first, "new_password": "Fr3shpassword"})
    assert response.status_code == 422


# --- profile ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/v1/auth/profile", "/api/v1/users/profile"])
def test_profile_read_both_paths(client, make_user, auth_headers, path):
    user_id = make_user(email="me@example.com")
    response = client.get(path, headers=auth_headers(user_id))
    assert response.status_code == 200
    assert response.json["user"]["email"] == "me@example.com"
    assert "password_hash" not in response.json["user"]


@pytest.mark.parametrize("path", ["/api/v1/auth/profile", "/api/v1/users/profile"])
def test_profile_requires_a_token(client, path):
    assert client.get(path).status_code == 401
    assert client.put(path, json={"bio": "x"}).status_code == 401


def test_profile_update_changes_only_safe_fields(client, app, make_user, auth_headers):
    user_id = make_user(email="me@example.com")
    response = client.put("/api/v1/users/profile", headers=auth_headers(user_id), json={
        "first_name": "Zoë", "bio": "C# & SQL: select the best index", "website": "https://zoe.dev",
        "date_of_birth": "1990-05-17", "role": "admin", "email": "evil@example.com",
        "is_active": False})
    assert response.status_code == 200
    assert response.json["user"]["first_name"] == "Zoë"
    user = user_row(app, id=user_id)
    assert user.bio == "C# & SQL: select the best index" and user.date_of_birth.isoformat() == "1990-05-17"
    assert (user.role, user.email, user.is_active) == ("student", "me@example.com", True)


@pytest.mark.parametrize("body, field", [
    ({"first_name": None}, "first_name"),
    ({"website": "javascript:alert(1)"}, "website"),
    ({"bio": "<img src=x onerror=alert(1)>"}, "bio"),
    ({"bio": "x" * 2001}, "bio"),
    ({"date_of_birth": "17/05/1990"}, "date_of_birth"),
])
def test_profile_update_rejects_bad_input(client, app, make_user, auth_headers, body, field):
    user_id = make_user()
    response = client.put("/api/v1/auth/profile", headers=auth_headers(user_id), json=body)
    assert response.status_code == 422
    assert any(key.startswith(field) or key == "body" for key in response.json["details"])
    assert user_row(app, id=user_id).bio is None


# --- profile picture --------------------------------------------------------------------------

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N"
       b"\x00\x00\x00\x00IEND\xaeB`\x82")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32


def upload(client, headers, data, filename, path="/api/v1/auth/profile/picture"):
    return client.post(path, headers=headers, content_type="multipart/form-data",
                       data={"file": (io.BytesIO(data), filename)})


@pytest.mark.parametrize("path", ["/api/v1/auth/profile/picture",
                                  "/api/v1/files/upload-profile-picture"])
def test_profile_picture_upload_and_public_url(client, app, make_user, auth_headers, path):
    user_id = make_user()
    response = upload(client, auth_headers(user_id), PNG, "../../etc/passwd.png", path)
    assert response.status_code == 200
    url = response.json["user"]["profile_picture"]
    assert re.fullmatch(r"/static/uploads/profiles/[0-9a-f]{32}\.png", url)
    served = client.get(url)
    assert served.status_code == 200 and served.data == PNG
    assert served.mimetype == "image/png"
    assert user_row(app, id=user_id).profile_picture == url


def test_replacing_the_picture_deletes_the_old_file(client, app, make_user, auth_headers):
    import os

    user_id = make_user()
    first = upload(client, auth_headers(user_id), PNG, "a.png").json["user"]["profile_picture"]
    second = upload(client, auth_headers(user_id), JPEG, "b.jpg").json["user"]["profile_picture"]
    assert first != second
    old_file = os.path.join(app.config["UPLOAD_FOLDER"], first[len("/static/uploads/"):])
    assert not os.path.exists(old_file)
    assert client.get(first).status_code == 404
    assert client.get(second).status_code == 200


@pytest.mark.parametrize("data, filename, status", [
    (b"MZ\x90\x00" + b"\x00" * 20, "tool.exe", 415),
    (JPEG, "fake.png", 415),
    (b"%PDF-1.7\n", "doc.pdf", 415),
    (b"", "empty.png", 422),
    (PNG, "bad\x00name.png", 422),
])
def test_profile_picture_rejections(client, app, make_user, auth_headers, data, filename, status):
    user_id = make_user()
    response = upload(client, auth_headers(user_id), data, filename)
    assert response.status_code == status
    assert user_row(app, id=user_id).profile_picture is None


def test_profile_picture_without_a_file(client, make_user, auth_headers):
    user_id = make_user()
    response = client.post("/api/v1/auth/profile/picture", headers=auth_headers(user_id),
                           content_type="multipart/form-data", data={})
    assert response.status_code == 422 and "file" in response.json["details"]


def test_private_upload_folders_are_not_public(client, app):
    import os

    folder = os.path.join(app.config["UPLOAD_FOLDER"], "certificates")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "secret.png"), "wb") as handle:
        handle.write(PNG)
    assert client.get("/static/uploads/certificates/secret.png").status_code == 404
    assert client.get("/static/uploads/profiles/..%2fcertificates%2fsecret.png").status_code == 404
    assert client.get("/static/uploads/profiles/../certificates/secret.png").status_code == 404
